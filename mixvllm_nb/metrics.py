"""Read vLLM's Prometheus ``/metrics`` text: samples, the few numbers a dashboard needs, rates.

No prometheus_client: the text exposition format is small enough to parse here, and this module
must stay light to import. ``VllmMetrics.from_text(scrape)`` gives KV cache usage, running and
waiting requests, token counters and latency histograms, summed over the label sets (one per
model and engine); ``rates(previous, current, dt)`` turns two scrapes into tokens per second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


@dataclass(frozen=True)
class Sample:
    """One line of a scrape: metric name, labels, value (and the optional timestamp in ms)."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = math.nan
    timestamp: float | None = None


def _bad(number: int, line: str, why: str) -> ValueError:
    return ValueError(f"metrics line {number} is not a Prometheus sample ({why}): {line[:120]!r}")


def _skip_blanks(line: str, pos: int) -> int:
    while pos < len(line) and line[pos] in " \t":
        pos += 1
    return pos


def _parse_labels(line: str, pos: int, number: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` starting after the ``{``; return the labels and the end position."""
    labels: dict[str, str] = {}
    while True:
        pos = _skip_blanks(line, pos)
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if not match:
            raise _bad(number, line, "expected a label name")
        name, pos = match.group(), match.end()
        pos = _skip_blanks(line, pos)
        if line[pos:pos + 1] != "=":
            raise _bad(number, line, f"expected = after label {name}")
        pos = _skip_blanks(line, pos + 1)
        if line[pos:pos + 1] != '"':
            raise _bad(number, line, f"expected a quoted value for label {name}")
        pos += 1
        value = []
        while True:
            if pos >= len(line):
                raise _bad(number, line, f"label {name} has no closing quote")
            char = line[pos]
            if char == "\\":
                escaped = line[pos + 1:pos + 2]
                # Prometheus escapes only \\, \" and \n; keep anything else as written.
                value.append(_ESCAPES.get(escaped, "\\" + escaped))
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                value.append(char)
                pos += 1
        labels[name] = "".join(value)
        pos = _skip_blanks(line, pos)
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif pos >= len(line) or line[pos] != "}":
            raise _bad(number, line, "expected , or } after a label")


def parse_prometheus(text: str) -> list[Sample]:
    """Return every sample of a Prometheus text-format scrape, in order.

    Comments (``# HELP``, ``# TYPE``, ``# EOF``) and blank lines are skipped; label values are
    unescaped; ``+Inf``, ``-Inf`` and ``NaN`` become floats. A malformed line raises ValueError
    naming its line number.
    """
    if not isinstance(text, str):
        raise ValueError(f"metrics text must be a string, not {type(text).__name__}")
    samples = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if not match:
            raise _bad(number, line, "expected a metric name")
        name, pos = match.group(), match.end()
        labels: dict[str, str] = {}
        brace = _skip_blanks(line, pos)
        if line[brace:brace + 1] == "{":
            labels, pos = _parse_labels(line, brace + 1, number)
        parts = line[pos:].split()
        if not 1 <= len(parts) <= 2:
            raise _bad(number, line, "expected a value and an optional timestamp")
        try:
            value = float(parts[0])
            timestamp = float(parts[1]) if len(parts) == 2 else None
        except ValueError:
            raise _bad(number, line, f"{parts[0]!r} is not a number") from None
        samples.append(Sample(name, labels, value, timestamp))
    return samples


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative buckets (upper bound, count), count and sum."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    @property
    def mean(self) -> float | None:
        """Return sum / count, or None before the first observation."""
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Return the q-quantile estimated from the buckets, as PromQL's histogram_quantile does.

        Linear interpolation inside the bucket holding the rank; a rank in the +Inf bucket gives
        the highest finite bound. None when there are no observations.
        """
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1:
            raise ValueError(f"q={q!r} is not allowed: a quantile is a number with 0 <= q <= 1")
        if not self.buckets or self.buckets[-1][1] <= 0:
            return None
        rank = q * self.buckets[-1][1]
        below_bound, below_count = 0.0, 0.0
        for index, (bound, cumulative) in enumerate(self.buckets):
            if cumulative >= rank:
                if math.isinf(bound):
                    return below_bound if index else None  # no finite bucket: no estimate
                in_bucket = cumulative - below_count
                if in_bucket <= 0:
                    return bound
                return below_bound + (bound - below_bound) * (rank - below_count) / in_bucket
            below_bound, below_count = bound, cumulative
        return below_bound

    def to_dict(self) -> dict:
        """Return count, sum, mean and the p50/p90/p99 estimates as JSON-ready data."""
        return {"count": self.count, "sum": self.sum, "mean": self.mean,
                "p50": self.quantile(0.5), "p90": self.quantile(0.9), "p99": self.quantile(0.99)}


def histogram(samples: Iterable[Sample], name: str) -> Histogram | None:
    """Return the histogram ``name`` summed over its label sets, or None if it is absent."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    found = False
    for s in samples:
        if s.name == f"{name}_bucket" and "le" in s.labels:
            bound = float(s.labels["le"])
            buckets[bound] = buckets.get(bound, 0.0) + s.value
            found = True
        elif s.name == f"{name}_count":
            count += s.value
            found = True
        elif s.name == f"{name}_sum":
            total += s.value
            found = True
    if not found:
        return None
    if buckets and math.inf not in buckets:
        buckets[math.inf] = count  # an exposition without +Inf: the count is that bucket
    return Histogram(tuple(sorted(buckets.items())), count, total)


def _total(samples: Iterable[Sample], *names: str) -> float | None:
    """Return the sum of the first metric name present, over its label sets, or None."""
    for name in names:
        values = [s.value for s in samples if s.name == name]
        if values:
            return sum(values)
    return None


def _mean(samples: Iterable[Sample], *names: str) -> float | None:
    for name in names:
        values = [s.value for s in samples if s.name == name]
        if values:
            return sum(values) / len(values)
    return None


def _as_int(value: float | None) -> int | None:
    return None if value is None or math.isnan(value) else int(value)


@dataclass(frozen=True)
class VllmMetrics:
    """The numbers of one vLLM scrape a dashboard shows; None where the server lacks the metric.

    Counters, gauges and histograms are summed over label sets (one per model and engine);
    ``kv_cache_usage`` (a fraction, 1.0 = full) is their mean, since a sum of fractions means
    nothing.
    """

    kv_cache_usage: float | None = None
    num_requests_running: int | None = None
    num_requests_waiting: int | None = None
    prompt_tokens_total: float | None = None
    generation_tokens_total: float | None = None
    request_success_total: float | None = None
    num_preemptions_total: float | None = None
    time_to_first_token: Histogram | None = None
    inter_token_latency: Histogram | None = None
    e2e_request_latency: Histogram | None = None
    model_names: tuple[str, ...] = ()

    @classmethod
    def from_samples(cls, samples: Iterable[Sample], model: str | None = None) -> VllmMetrics:
        """Return the metrics of parsed samples (only ``model``'s label sets when given)."""
        vllm = [s for s in samples if s.name.startswith("vllm:")]
        if model is not None:
            vllm = [s for s in vllm if s.labels.get("model_name") == model]
        return cls(
            # vLLM renamed gpu_cache_usage_perc (which the CPU build also used) to kv_cache_usage.
            kv_cache_usage=_mean(vllm, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            num_requests_running=_as_int(_total(vllm, "vllm:num_requests_running")),
            num_requests_waiting=_as_int(_total(vllm, "vllm:num_requests_waiting")),
            prompt_tokens_total=_total(vllm, "vllm:prompt_tokens_total"),
            generation_tokens_total=_total(vllm, "vllm:generation_tokens_total"),
            request_success_total=_total(vllm, "vllm:request_success_total"),
            num_preemptions_total=_total(vllm, "vllm:num_preemptions_total"),
            time_to_first_token=histogram(vllm, "vllm:time_to_first_token_seconds"),
            inter_token_latency=histogram(vllm, "vllm:inter_token_latency_seconds")
            or histogram(vllm, "vllm:time_per_output_token_seconds"),
            e2e_request_latency=histogram(vllm, "vllm:e2e_request_latency_seconds"),
            model_names=tuple(sorted({s.labels["model_name"] for s in vllm
                                      if "model_name" in s.labels})),
        )

    @classmethod
    def from_text(cls, text: str, model: str | None = None) -> VllmMetrics:
        """Return the metrics of a ``/metrics`` scrape (only ``model``'s when given)."""
        return cls.from_samples(parse_prometheus(text), model)

    def to_dict(self) -> dict:
        """Return the metrics as JSON-ready data (histograms as count/sum/mean/quantiles)."""
        data = asdict(self)
        for name in ("time_to_first_token", "inter_token_latency", "e2e_request_latency"):
            value = getattr(self, name)
            data[name] = None if value is None else value.to_dict()
        data["model_names"] = list(self.model_names)
        return data


@dataclass(frozen=True)
class MetricsRate:
    """Throughput between two scrapes; None where a counter is missing or was reset."""

    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    requests_per_s: float | None
    interval_s: float


def _rate(before: float | None, after: float | None, dt: float) -> float | None:
    if before is None or after is None or after < before:
        return None  # a counter that went down means the server restarted: no honest rate
    return (after - before) / dt


def rates(previous: VllmMetrics, current: VllmMetrics, dt: float) -> MetricsRate:
    """Return tokens/s and requests/s from two scrapes taken ``dt`` seconds apart."""
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not 0 < dt < math.inf:
        raise ValueError(f"dt={dt!r} is not allowed: the interval must be a positive number of s")
    return MetricsRate(
        _rate(previous.prompt_tokens_total, current.prompt_tokens_total, dt),
        _rate(previous.generation_tokens_total, current.generation_tokens_total, dt),
        _rate(previous.request_success_total, current.request_success_total, dt),
        float(dt),
    )


def samples_named(samples: Iterable[Sample], name: str) -> list[Sample]:
    """Return the samples of one metric name (all label sets)."""
    return [s for s in samples if s.name == name]


def label_values(samples: Iterable[Sample], label: str) -> Mapping[str, float]:
    """Return {label value: summed sample value}, e.g. finished requests by finished_reason."""
    out: dict[str, float] = {}
    for s in samples:
        if label in s.labels:
            out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
    return out
