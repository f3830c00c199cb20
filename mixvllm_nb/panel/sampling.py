"""Sampling sliders: start at the server's generation defaults, and say what each chat request sends."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from ..config.options import SAMPLING_OPTIONS, bounds


@dataclass(frozen=True)
class SliderSpec:
    """One sampling parameter: its range, and the value shown when the server sets no default."""

    name: str
    kind: type
    minimum: float
    maximum: float
    step: float
    neutral: float  # what the slider shows when the server has no default for it


# Per slider: its step, its value when the server has no default, and an upper end where the
# field has none a person would drag to. The ranges themselves are GenerationDefaults' bounds.
_LOOK = {"temperature": (0.05, 1.0, None), "top_p": (0.01, 1.0, None), "top_k": (1, -1, 200),
         "max_tokens": (1, 256, 4096), "presence_penalty": (0.1, 0.0, None), "frequency_penalty": (0.1, 0.0, None)}


def _spec(name: str) -> SliderSpec:
    step, neutral, ui_max = _LOOK[name]
    span = bounds(name)
    low = span.low + step if span.low_open else span.low  # a slider cannot exclude its end: top_p > 0
    high = min(span.high, ui_max) if span.high is not None and ui_max else (ui_max or span.high)
    return SliderSpec(name, span.kind, low, high, step, neutral)


SPECS: tuple[SliderSpec, ...] = tuple(_spec(option.path.split(".")[-1]) for option in SAMPLING_OPTIONS)


class SamplingSection(widgets.VBox):
    """Sliders for temperature, top_p, top_k, max_tokens and the penalties, with a reset button.

    A request sends the parameters the server has a default for (the slider starts there) and
    the ones the user moved; the others are left out, so the server's own defaults apply.
    """

    def __init__(self) -> None:
        self.defaults: dict[str, Any] = {}
        self.touched: set[str] = set()
        self._loading = False
        self.sliders: dict[str, widgets.FloatSlider | widgets.IntSlider] = {}
        style = {"description_width": "130px"}
        layout = widgets.Layout(width="460px")
        for spec in SPECS:
            cls = widgets.FloatSlider if spec.kind is float else widgets.IntSlider
            extra = {"readout_format": ".2f"} if spec.kind is float else {}
            slider = cls(value=spec.neutral, min=spec.minimum, max=spec.maximum, step=spec.step,
                         description=spec.name, continuous_update=False, style=style, layout=layout, **extra)
            slider.observe(self._on_change, names="value")
            self.sliders[spec.name] = slider
        self.reset_button = widgets.Button(description="Reset to server defaults",
                                           layout=widgets.Layout(width="220px"))
        self.reset_button.on_click(lambda _: self.reset())
        self.summary = widgets.HTML()
        super().__init__([*self.sliders.values(), self.reset_button, self.summary])
        self._show_summary()

    def load_defaults(self, defaults: dict[str, Any]) -> None:
        """Set the sliders to a server's generation defaults (neutral values where it has none)."""
        self.defaults = {k: v for k, v in defaults.items() if k in self.sliders and v is not None}
        self.reset()

    def reset(self) -> None:
        """Put every slider back to the server's default (or the neutral value) and unmark it."""
        self._loading = True
        try:
            for spec in SPECS:
                slider = self.sliders[spec.name]
                value = self.defaults.get(spec.name, spec.neutral)
                if value > slider.max:  # e.g. a server default longer than the slider's range
                    slider.max = value
                slider.value = value
        finally:
            self._loading = False
        self.touched.clear()
        self._show_summary()

    def params(self) -> dict[str, Any]:
        """Return the sampling parameters a chat request sends now."""
        sent = [spec for spec in SPECS if spec.name in self.defaults or spec.name in self.touched]
        return {spec.name: spec.kind(self.sliders[spec.name].value) for spec in sent}

    def _on_change(self, change: dict[str, Any]) -> None:
        if self._loading:
            return
        self.touched.add(change["owner"].description)
        self._show_summary()

    def _show_summary(self) -> None:
        params = self.params()
        sent = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        others = [spec.name for spec in SPECS if spec.name not in params]
        rest = f" The server decides {', '.join(others)}." if others else ""
        self.summary.value = (
            f"<div style='color:#57606a'>Each chat request sends: <code>{html.escape(sent or 'nothing')}</code>."
            f"{html.escape(rest)}</div>"
        )
