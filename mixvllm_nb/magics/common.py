"""What every magic shares: one-line errors, argument parsing, arguments derived from the config."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

from ..errors import MixVLLMError

Spec = tuple[tuple[str, ...], dict[str, Any]]


def magic_command(specs: Callable[[], list[Spec]] | None = None) -> Callable[[Callable[..., Any]], Any]:
    """Make a magic whose arguments and ``%magic?`` help are built on first use, and whose errors are one line.

    ``specs`` returns more arguments (flags and ``add_argument`` keywords), e.g. the serve flags derived
    from the config's pydantic fields. IPython's ``magic_arguments()`` would build them, and import
    pydantic, when the magics module is imported: building them when a magic is first used or asked
    for help keeps ``%load_ext mixvllm_nb`` at a few milliseconds. mixvllm_nb's errors become
    ``UsageError``: one line in the cell, no traceback.
    """

    def decorate(func: Callable[..., Any]) -> LazyMagic:
        return LazyMagic(func, specs)

    return decorate


class LazyMagic:
    """A magic method whose parser and help text are built from its argument decorators when first needed."""

    def __init__(self, func: Callable[..., Any], specs: Callable[[], list[Spec]] | None) -> None:
        self.func = func
        self.specs = specs
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self._lock = threading.Lock()
        self._built = False

    def build(self) -> None:
        """Add the deferred arguments and let IPython construct the parser and the help text (once)."""
        with self._lock:
            if self._built:
                return
            func = self.func
            if not getattr(func, "has_arguments", False):
                func.has_arguments, func.decorators = True, []
            for flags, kwargs in reversed(self.specs() if self.specs else []):
                func = argument(*flags, **kwargs)(func)
            magic_arguments()(func)  # sets func.parser and func.__doc__ (the generated help)
            self._built = True

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else BoundLazyMagic(self, instance)

    def __call__(self, instance: Any, *args: Any, **kwargs: Any) -> Any:
        return BoundLazyMagic(self, instance)(*args, **kwargs)


class BoundLazyMagic:
    """What IPython registers: callable like the bound method, with ``parser`` and ``__doc__`` built on access."""

    def __init__(self, magic: LazyMagic, instance: Any) -> None:
        self.magic = magic
        self.instance = instance
        self.__name__ = magic.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.magic.func(self.instance, *args, **kwargs)
        except MixVLLMError as exc:
            raise UsageError(str(exc)) from None

    @property
    def parser(self) -> Any:
        self.magic.build()
        return self.magic.func.parser

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        self.magic.build()
        return self.magic.func.__doc__ or ""


def parse(magic: Any, line: str) -> Any:
    """Parse a magic's line; a bad value is a one-line UsageError (argparse would exit)."""
    try:
        return magic.parser.parse_argstring(line)
    except UsageError:
        raise
    except SystemExit as exc:
        raise UsageError(f"invalid arguments: {line!r}") from exc


def sampling_arguments() -> list[Spec]:
    """The sampling flags of the chat magics: the generation defaults' flags, plus ``--seed`` (per request)."""
    from ..config.options import SAMPLING_OPTIONS

    specs: list[Spec] = [(o.flags, {**o.argparse_kwargs(),
                                    "help": f"{o.help} (default: the server's)".replace("%", "%%")})
                         for o in SAMPLING_OPTIONS]
    specs.append((("--seed",), {"type": int, "default": None, "help": "random seed for sampling"}))
    return specs


def sampling_of(args: Any) -> dict[str, Any]:
    """Return the sampling a chat magic was given (None where the server's default applies)."""
    from ..config.options import SAMPLING_OPTIONS

    names = [o.path.split(".")[-1] for o in SAMPLING_OPTIONS]
    return {name: getattr(args, name) for name in [*names, "seed"]}


def in_notebook() -> bool:
    """Return True in a Jupyter kernel (HTML output), False in a terminal IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def print_stream(pieces: Any, stats: Any) -> str:
    """Print streamed pieces as they arrive (each flush is one output update), then what the
    answer cost (tokens, time to first token, tokens/s); return the text."""
    text = []
    for piece in pieces:
        text.append(piece)
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write(f"\n[{stats.summary()}]\n")
    return "".join(text)


def find_server(name: str | None) -> Any:
    """Return the server called ``name`` (or the newest); a one-line UsageError when there is none."""
    from ..api import get_server

    try:
        return get_server(name)
    except MixVLLMError as exc:
        raise UsageError(str(exc)) from None
