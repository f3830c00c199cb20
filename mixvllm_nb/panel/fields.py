"""Launch widgets built from the config's declarations: type, choices, bounds and help come from the field.

As ipywidgets' ``interact`` builds a control from an abbreviation, this builds one from a pydantic
field of :class:`~mixvllm_nb.config.ServeConfig`: a checkbox for a bool, a dropdown for choices, a
slider for a number bounded on both ends, a bounded box for a count, a text box for a name, and a
box that may stay empty for a count the engine or the model decides when it is not set.
"""

from __future__ import annotations

import re
from typing import Any

import ipywidgets as widgets
import traitlets
from pydantic import BaseModel

from ..config import ServeConfig
from ..config.options import Option, bounds, value_type

STYLE = {"description_width": "180px"}
WIDE = widgets.Layout(width="560px")
NARROW = widgets.Layout(width="380px")
# Upper ends for a box when the field has none: the most a person would type here.
_UI_MAX = {"max_model_len": 10_000_000, "tensor_parallel_size": 64}


def _count_to_text(value: Any, _widget: Any = None) -> str:
    return "" if value is None else str(value)


def _text_to_count(text: Any, _widget: Any = None) -> Any:
    """The browser's text as a count; '' is "not set"; anything else goes on as typed, for the config to refuse."""
    if isinstance(text, str):
        cleaned = text.strip().replace(",", "").replace("_", "")
        if not cleaned:
            return None
        return int(cleaned) if cleaned.isdigit() else text
    return text


class OptionalIntText(widgets.Text):
    """A count that may be left empty: ``value`` is None ("not set", the placeholder says who decides) or an int.

    A number box cannot be empty, and its 0 reads as "zero tokens" rather than "the model's own length".
    What the user types that is no count stays as typed, so that the config's validation names it.
    """

    value = traitlets.Any(None, allow_none=True).tag(sync=True, to_json=_count_to_text, from_json=_text_to_count)

    @traitlets.validate("value")
    def _not_set_is_none(self, proposal: dict[str, Any]) -> Any:
        value = _text_to_count(proposal["value"])
        return None if value == 0 else value


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
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    choices = tuple(extra.get("choices", ())) or choices
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
    if default is None:  # "not set" shows empty, with who decides then (the help's "(default: ...)")
        match = re.search(r"\(default: ([^)]*)\)", help_text)
        placeholder = f"default: {match[1]}" if match else "not set"
        return OptionalIntText(description=label, value=None, placeholder=placeholder, style=STYLE, layout=NARROW,
                               tooltip=help_text)
    low = int(span.low) if span.low is not None else 0
    high = int(span.high) if span.high is not None else _UI_MAX.get(leaf, 1_000_000)
    return widgets.BoundedIntText(description=label, value=default or 0, min=low, max=high, style=STYLE,
                                  layout=NARROW, tooltip=help_text)

