"""Structured output: a JSON schema, a choice list, a regex or a grammar turned into the request fields of each
engine, and the answer turned into a checked value (or a one-line error, never a half-parsed value).

:func:`output_format` reads what the user asked for; :meth:`OutputFormat.request_fields` says it in vLLM's
(``structured_outputs``), llama.cpp's or SGLang's words; :meth:`OutputFormat.value_of` parses the answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MixVLLMError


class StructuredOutputError(MixVLLMError, ValueError):
    """The answer did not become the value asked for (cut at max_tokens, or not valid); ``text`` is what came."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True)
class OutputFormat:
    """The shape an answer must take: ``kind`` is json, choice, regex or grammar, ``spec`` the schema, the
    choices, the pattern or the grammar text; ``model`` the pydantic class a schema came from."""

    kind: str
    spec: Any
    model: Any = None

    def request_fields(self, engine: str = "vllm", endpoint: str = "chat") -> dict[str, Any]:
        """Return the request body fields that ask ``engine`` (vllm, llamacpp, sglang) for this format.

        vLLM (0.12 and later; any other engine is taken to speak vLLM's API): ``structured_outputs`` with
        ``json``, ``choice``, ``regex`` or ``grammar`` (EBNF, GBNF-style), on chat and completions alike.
        llama.cpp's server: chat takes ``response_format: {"type": "json_object", "schema": ...}``, both take a
        GBNF ``grammar`` (a choice list becomes one); it has no regex. SGLang: ``response_format`` (chat) or
        ``json_schema`` (completions), ``regex``, ``ebnf``.
        """
        if engine == "llamacpp":
            if self.kind == "regex":
                raise ConfigError("regex: structured output with a regex is not on the llama.cpp engine; it takes "
                                  "a JSON schema, a choice list or a GBNF grammar (or use backend vllm)")
            if self.kind == "json" and endpoint == "chat":
                return {"response_format": {"type": "json_object", "schema": self.spec}}
            return {"grammar": self._gbnf()}
        if engine == "sglang":
            if self.kind == "json":
                if endpoint == "chat":
                    return {"response_format": {"type": "json_schema",
                                                "json_schema": {"name": "answer", "schema": self.spec}}}
                return {"json_schema": json.dumps(self.spec)}
            if self.kind == "regex":
                return {"regex": self.spec}
            return {"ebnf": self._gbnf()}
        return {"structured_outputs": {self.kind: self.spec}}

    def _gbnf(self) -> str:
        if self.kind == "grammar":
            return self.spec
        if self.kind == "choice":  # a JSON string literal is a GBNF one: same quotes and escapes
            return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in self.spec)
        try:  # a JSON schema, for llama.cpp's completions (its chat takes the schema itself)
            from llama_cpp.llama_grammar import json_schema_to_gbnf
        except ImportError:
            raise ConfigError("json_schema: plain completions with a JSON schema need llama_cpp here to turn the "
                              "schema into a grammar; use chat, or pip install llama-cpp-python") from None
        return json_schema_to_gbnf(json.dumps(self.spec))

    def value_of(self, text: str, stats: Any) -> Any:
        """Return the answer as a value: a pydantic instance, a dict checked against the schema, the choice,
        or the text; a one-line :class:`StructuredOutputError` when it was cut short or does not fit."""
        what = {"json": "JSON", "choice": "choice", "regex": "match", "grammar": "grammar's output"}[self.kind]
        if stats.finish_reason == "length":
            # llama.cpp reports no usage in streams: then the number of tokens is not known.
            tokens = stats.usage["completion_tokens"] if stats.usage else None
            count, hint = (f" ({tokens} tokens)", f" (e.g. max_tokens={max(2 * tokens, 64)})") if tokens else ("", "")
            raise StructuredOutputError(f"the answer was cut at max_tokens{count} before the {what} was complete; "
                                        f"raise max_tokens{hint}", text)
        if stats.finish_reason != "stop":
            raise StructuredOutputError(f"the answer ended early (finish_reason {stats.finish_reason!r}) before the "
                                        f"{what} was complete; send it again", text)
        if self.kind == "json":
            return self._json_value(text)
        if self.kind == "choice" and text.strip() not in self.spec:
            raise StructuredOutputError(f"the answer {_short(text)} is none of the choices {self.spec}", text)
        if self.kind == "choice":
            return text.strip()
        if self.kind == "regex" and (pattern := _python_regex(self.spec)) and not pattern.fullmatch(text):
            raise StructuredOutputError(f"the answer {_short(text)} does not match the regex {self.spec!r}", text)
        return text

    def _json_value(self, text: str) -> Any:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StructuredOutputError(f"the answer is not valid JSON ({exc}): {_short(text)}", text) from None
        if self.model is not None:
            from pydantic import ValidationError

            try:
                return self.model.model_validate(data)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(map(str, first["loc"])) or "(top level)"
                raise StructuredOutputError(f"the answer does not fit {self.model.__name__}: {where}: "
                                            f"{first['msg']} ({exc.error_count()} errors)", text) from None
        jsonschema = _jsonschema()
        if jsonschema is not None:
            error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(self.spec)(self.spec)
                                                     .iter_errors(data))
            if error is not None:
                where = "/".join(map(str, error.absolute_path)) or "(top level)"
                raise StructuredOutputError(f"the answer does not fit the schema: {where}: "
                                            f"{error.message[:200]}", text)
        return data


def output_format(json_schema: Any = None, choice: list[str] | None = None, regex: str | None = None,
                  grammar: str | Path | None = None) -> OutputFormat | None:
    """Return the structured output asked for (None for free text); a one-line ConfigError for a bad one.

    One at a time. ``json_schema``: a pydantic model class (the value is then an instance of it), a dict
    (a JSON schema: the value is the parsed JSON, checked against the schema when the ``jsonschema`` package
    is installed, otherwise only parsed: the server's constraint is then the only check), or the path of a
    ``.json`` file holding one. ``choice``: a list of strings (the value is one of them). ``regex``: a pattern
    (the value is the text, checked with Python's ``re.fullmatch`` when Python can compile the pattern).
    ``grammar``: EBNF/GBNF text or a ``Path`` to a file (the value is the text, unchecked).
    """
    given = {name: value for name, value in (("json_schema", json_schema), ("choice", choice), ("regex", regex),
                                             ("grammar", grammar)) if value is not None}
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)}: structured output takes one of json_schema, choice, regex, "
                          "grammar at a time")
    if json_schema is not None:
        return _json_format(json_schema)
    if choice is not None:
        if isinstance(choice, str) or not choice or not all(isinstance(c, str) and c for c in choice):
            raise ConfigError("choice: give a non-empty list of non-empty strings, e.g. ['yes', 'no'] "
                              f"(got {choice!r})")
        return OutputFormat("choice", list(choice))
    if regex is not None:
        if not isinstance(regex, str) or not regex:
            raise ConfigError(f"regex: give a non-empty pattern string (got {regex!r})")
        return OutputFormat("regex", regex)
    if grammar is not None:
        text = _read(grammar, "grammar") if isinstance(grammar, Path) else grammar
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"grammar: give EBNF/GBNF text such as 'root ::= \"yes\" | \"no\"' "
                              f"(got {grammar!r})")
        return OutputFormat("grammar", text)
    return None


def request_keywords(fmt: OutputFormat | None, engine: str, endpoint: str = "chat") -> dict[str, Any]:
    """Return the openai client's keywords that ask ``engine`` for ``fmt`` (``{}`` for free text)."""
    return {} if fmt is None else {"extra_body": fmt.request_fields(engine, endpoint)}


def _json_format(source: Any) -> OutputFormat:
    if isinstance(source, type) and hasattr(source, "model_json_schema"):
        return OutputFormat("json", source.model_json_schema(), source)
    if isinstance(source, (str, Path)):
        try:
            schema = json.loads(_read(Path(source), "json_schema"))
        except ValueError as exc:
            raise ConfigError(f"json_schema: {source} is not JSON ({exc})") from None
    elif isinstance(source, dict):
        schema = source
    else:
        raise ConfigError(f"json_schema: give a pydantic model class, a dict or a .json file "
                          f"(got a {type(source).__name__})")
    if not isinstance(schema, dict):
        raise ConfigError(f"json_schema: a schema is a JSON object (got a {type(schema).__name__})")
    jsonschema = _jsonschema()
    if jsonschema is not None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.exceptions.SchemaError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "(top level)"
            raise ConfigError(f"json_schema: not a valid JSON schema at {where}: {exc.message[:200]}") from None
    return OutputFormat("json", schema)


def _read(path: Path, what: str) -> str:
    try:
        return path.expanduser().read_text()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {str(path)!r} ({exc.strerror or exc})") from None


def _jsonschema() -> Any:
    try:
        import jsonschema
    except ImportError:
        return None
    return jsonschema


def _python_regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # the server's regex dialect accepts it; Python cannot check it
        return None


def _short(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
