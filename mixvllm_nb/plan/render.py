"""Show a memory plan: a text table, an HTML table for notebooks, and a matplotlib bar."""

from __future__ import annotations

import html as html_lib
from typing import TYPE_CHECKING, Any

from .options import CUDA_RESERVED_BYTES

if TYPE_CHECKING:
    from .planner import MemoryPlan

_GIB = 1024**3


def human_bytes(n: float | None) -> str:
    """Return a byte count as GiB / MiB / KiB text."""
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", _GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{sign}{n / size:,.2f} {unit}"
    return f"{sign}{n:,.0f} B"


def human_count(n: int) -> str:
    """Return a parameter count as 8.03 B / 134.5 M."""
    if n >= 10**9:
        return f"{n / 1e9:,.2f} B"
    if n >= 10**6:
        return f"{n / 1e6:,.1f} M"
    return f"{n:,}"


def rows(p: MemoryPlan) -> list[tuple[str, str]]:
    """Return the plan as (label, value) rows."""
    par = f"TP {p.tensor_parallel_size} x PP {p.pipeline_parallel_size}"
    out = [
        ("model", f"{p.model} ({p.architecture})"),
        ("device", p.device + ("" if p.tensor_parallel_size * p.pipeline_parallel_size == 1
                               else f" ({par})")),
        ("parameters", f"{human_count(p.parameters)} (from {p.parameters_source})"),
        ("dtype / quantization", f"{p.dtype} / {p.quantization or 'none'}"),
        ("weights", f"{human_bytes(p.weights_bytes)} (from {p.weights_source})"),
        ("KV cache per token", f"{p.kv_bytes_per_token:,} B ({p.kv_cache_dtype}, "
                               f"{p.num_layers} layers)"),
    ]
    if p.tensor_parallel_size * p.pipeline_parallel_size > 1:
        out.append(("per GPU", f"{human_bytes(p.weights_bytes_per_gpu)} of weights, "
                               f"{p.kv_bytes_per_token_per_gpu:,} B of KV cache per token"))
    if p.sliding_window_layers:
        out.append(("sliding-window layers", f"{p.sliding_window_layers} of {p.num_layers}"))
    if p.device_memory_bytes is not None:
        visible = p.device_memory_bytes - CUDA_RESERVED_BYTES
        out.append(("GPU memory", f"{human_bytes(p.device_memory_bytes)} ({human_bytes(visible)}"
                                  f" usable by CUDA) x {p.gpu_memory_utilization:g} utilization"))
        out.append(("activations + overhead", f"{human_bytes(p.overhead_bytes)} (estimate)"))
    if p.kv_budget_bytes is not None:
        out.append(("KV cache budget", human_bytes(p.kv_budget_bytes)))
        out.append(("KV cache", f"{p.kv_cache_tokens:,} tokens ({p.kv_blocks:,} blocks of "
                                f"{p.block_size})"))
        out.append(("max concurrency", f"{p.max_concurrency:.2f}x at max_model_len "
                                       f"{p.max_model_len:,}"))
        out.append(("fits", "yes" if p.fits else "NO"))
    else:
        out.append(("max_model_len", f"{p.max_model_len:,}"))
        out.append(("KV cache", "give gpu= or cpu_kv_cache_gib= to size it"))
    return out


def text(p: MemoryPlan) -> str:
    """Return the plan as an aligned text table, then its advice and notes."""
    table = rows(p)
    width = max(len(label) for label, _ in table)
    lines = ["Memory plan"] + [f"  {label:<{width}}  {value}" for label, value in table]
    if p.advice:
        lines += ["Advice:"] + [f"  - {a}" for a in p.advice]
    if p.notes:
        lines += ["Notes:"] + [f"  - {n}" for n in p.notes]
    return "\n".join(lines)


def html(p: MemoryPlan) -> str:
    """Return the plan as an HTML table for Jupyter."""
    esc = html_lib.escape
    body = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>"
                   f"{esc(v)}</td></tr>" for k, v in rows(p))
    parts = [f"<table><caption>Memory plan</caption>{body}</table>"]
    for title, items in (("Advice", p.advice), ("Notes", p.notes)):
        if items:
            parts.append(f"<b>{title}</b><ul>" + "".join(f"<li>{esc(i)}</li>" for i in items)
                         + "</ul>")
    return "".join(parts)


def plot(p: MemoryPlan, ax: Any = None) -> Any:
    """Draw one GPU's (or the CPU's) memory as a stacked horizontal bar; return the axes."""
    import matplotlib.pyplot as plt  # only here: importing the package must stay light

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 1.8))
    kv = max(0, p.kv_budget_bytes or 0)
    segments = [("weights", p.weights_bytes_per_gpu, "#4c72b0")]
    if p.overhead_bytes is not None:
        segments.append(("activations + overhead", p.overhead_bytes, "#dd8452"))
    segments.append(("KV cache", kv, "#55a868"))
    total = p.device_memory_bytes
    if total is not None and p.gpu_memory_utilization is not None:
        used = sum(size for _, size, _ in segments)
        segments.append(("headroom", max(0, total - used), "#cccccc"))
    left = 0.0
    for label, size, color in segments:
        ax.barh(0, size / _GIB, left=left, color=color, label=f"{label} {size / _GIB:.1f} GiB")
        left += size / _GIB
    if total is not None:
        ax.axvline(total / _GIB, color="black", linestyle="--", linewidth=1)
    ax.set_yticks([])
    ax.set_xlabel("GiB per GPU" if total is not None else "GiB")
    verdict = "" if p.fits is None else (" - fits" if p.fits else " - does not fit")
    ax.set_title(f"{p.model} on {p.device}{verdict}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=len(segments), fontsize=8,
              frameon=False)
    return ax
