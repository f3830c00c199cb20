"""Launch widgets built from the config's declarations: type, choices, bounds and help come from the field.

As ipywidgets' ``interact`` builds a control from an abbreviation, this builds one from a pydantic
field of :class:`~mixvllm_nb.config.ServeConfig`: a checkbox for a bool, a dropdown for choices, a
slider for a number bounded on both ends, a bounded box for a count, a text box for a name.
"""

from __future__ import annotations

import re

import ipywidgets as widgets
from pydantic import BaseModel

from ..config import ServeConfig
from ..config.options import Option, bounds, value_type

STYLE = {"description_width": "180px"}
WIDE = widgets.Layout(width="560px")
NARROW = widgets.Layout(width="380px")
# Upper ends for a box when the field has none: the most a person would type here.
_UI_MAX = {"max_model_len": 10_000_000, "tensor_parallel_size": 64}


def section_of(path: str) -> tuple[type[BaseModel], str]:
    """Return the model class that holds a dotted path's field, and the field's name."""
    *parents, leaf = path.split(".")
    model: type[BaseModel] = ServeConfig
    for part in parents:
        model = model.model_fields[part].annotation
    return model, leaf


def field_widget(path: str, label: str, *, default_label: str = "default") -> widgets.ValueWidget:
    """Return the widget for one config field (value: the field's default; None for 'not set')."""
    model, leaf = section_of(path)
    info = model.model_fields[leaf]
    help_text = info.description or ""
    kind, choices = value_type(info.annotation)
    option = Option(path, (f"--{leaf}",), kind, help_text, choices)
    default = info.default
    if option.kind is bool:
        return widgets.Checkbox(description=label, value=bool(default), style=STYLE, layout=WIDE, tooltip=help_text)
    if option.choices:
        choices = [(str(c), c) for c in option.choices]
        if default is None:
            choices.insert(0, (default_label, None))
        return widgets.Dropdown(description=label, options=choices, value=default, style=STYLE, layout=NARROW,
                                tooltip=help_text)
    if option.kind is str:
        match = re.search(r"\(default: ([^)]*)\)", help_text)
        return widgets.Text(description=label, value=default or "", placeholder=f"default: {match[1]}" if match else "",
                            style=STYLE, layout=WIDE, tooltip=help_text)
    span = bounds(leaf, model)
    if option.kind is float and span.low is not None and span.high is not None:
        step = 0.01
        low = span.low + step if span.low_open else span.low  # a slider cannot exclude its end
        return widgets.FloatSlider(description=label, value=default, min=low, max=span.high, step=step,
                                   continuous_update=False, style=STYLE, layout=WIDE, tooltip=help_text)
    low = int(span.low) if span.low is not None else 0
    if default is None:  # "not set" shows as 0: the engine decides
        low = 0
    high = int(span.high) if span.high is not None else _UI_MAX.get(leaf, 1_000_000)
    return widgets.BoundedIntText(description=label, value=default or 0, min=low, max=high, style=STYLE,
                                  layout=NARROW, tooltip=help_text)

