"""Read the KV cache size vLLM logs at start-up, to hold a plan against what vLLM decided."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..errors import ConfigError

# vLLM (v1, kv_cache_utils.py) logs, once per engine:
#   "GPU KV cache size: 23,296 tokens, Maximum concurrency for 2,048 tokens per request: 11.38x"
# ("CPU KV cache size" on the CPU build; older versions put the two parts on separate lines).
_SIZE = re.compile(r"KV cache size: (?P<tokens>[\d,]+) tokens")
_CONCURRENCY = re.compile(
    r"Maximum concurrency for (?P<len>[\d,]+) tokens per request: (?P<conc>[\d.]+)x"
)


def parse_vllm_kv_log(text: str) -> tuple[int, float | None, int | None] | None:
    """Return (KV cache tokens, max concurrency, max_model_len) from a vLLM log, or None.

    The last report in the text wins (a log can hold several starts). Concurrency and
    max_model_len are None when the log has the size line but not the concurrency line.
    """
    if not isinstance(text, str):
        raise ConfigError(f"log text must be a string, not {type(text).__name__}")
    sizes = list(_SIZE.finditer(text))
    if not sizes:
        return None
    tokens = int(sizes[-1]["tokens"].replace(",", ""))
    concurrencies = list(_CONCURRENCY.finditer(text))
    if not concurrencies:
        return tokens, None, None
    last = concurrencies[-1]
    return tokens, float(last["conc"]), int(last["len"].replace(",", ""))


@dataclass(frozen=True)
class LogComparison:
    """A plan's KV cache next to the one vLLM reported for the same model."""

    planned_tokens: int | None
    planned_concurrency: float | None
    planned_max_model_len: int
    reported_tokens: int
    reported_concurrency: float | None
    reported_max_model_len: int | None

    @property
    def same_max_model_len(self) -> bool:
        """Return whether vLLM ran with the max_model_len the plan assumed."""
        return self.reported_max_model_len in (None, self.planned_max_model_len)

    @property
    def matches(self) -> bool:
        """Return True when the plan predicted vLLM's token count and concurrency exactly."""
        if self.planned_tokens != self.reported_tokens:
            return False
        if self.reported_concurrency is None or self.planned_concurrency is None:
            return True
        return round(self.planned_concurrency, 2) == self.reported_concurrency

    @property
    def token_ratio(self) -> float | None:
        """Return reported / planned tokens (1.0 is a perfect plan), or None without a plan."""
        if not self.planned_tokens:
            return None
        return self.reported_tokens / self.planned_tokens

    def to_dict(self) -> dict:
        """Return the comparison as JSON-ready data."""
        return {**asdict(self), "matches": self.matches, "token_ratio": self.token_ratio}

    def __str__(self) -> str:
        planned = "no KV budget"
        if self.planned_tokens is not None:
            planned = f"{self.planned_tokens:,} tokens"
        line = f"KV cache: planned {planned}, vLLM reported {self.reported_tokens:,} tokens"
        if self.matches:
            return line + " (exact match)"
        if self.token_ratio is not None:
            line += f" (vLLM/plan = {self.token_ratio:.3f})"
        if not self.same_max_model_len:
            line += (f"; vLLM ran with max_model_len={self.reported_max_model_len:,}, the plan "
                     f"assumed {self.planned_max_model_len:,}: plan again with that value")
        return line
