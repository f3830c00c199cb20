"""Structured output: a JSON schema, a choice list, a regex or a grammar, through ``server.chat``/``generate``,
the magics and the panel, on the session's real vLLM CPU server and on the light llama.cpp engine.

The fast tests (no engine) check how a request is built and how an answer becomes a value or a one-line
error; their stand-in for an answer is a :class:`StreamStats` with the ``finish_reason`` a server sends.
"""

from __future__ import annotations

import json
import re

import pytest
from IPython.core.error import UsageError
from pydantic import BaseModel

from mixvllm_nb.client import Reply, StreamStats, request_params
from mixvllm_nb.errors import ConfigError, MixVLLMError
from mixvllm_nb.structured import OutputFormat, StructuredOutputError, output_format


class Person(BaseModel):
    name: str
    age: int


PERSON_PROMPT = "Give me a person called Alice who is 30 years old, as JSON."
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


def stats(finish_reason: str | None, tokens: int | None = 7) -> StreamStats:
    usage = None if tokens is None else {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}
    return StreamStats(usage=usage, pieces=tokens or 5, finish_reason=finish_reason)


# -- fast: building the request --------------------------------------------------------------------


def test_each_kind_becomes_vllm_structured_outputs():
    fields = output_format(json_schema=Person).request_fields("vllm", "chat")
    schema = fields["structured_outputs"]["json"]
    assert list(fields) == ["structured_outputs"] and list(fields["structured_outputs"]) == ["json"]
    assert set(schema["properties"]) == {"name", "age"} and schema["properties"]["age"]["type"] == "integer"
    assert output_format(choice=["yes", "no"]).request_fields() == {"structured_outputs": {"choice": ["yes", "no"]}}
    assert output_format(regex=DATE).request_fields("vllm", "completion") == {"structured_outputs": {"regex": DATE}}
    assert output_format(grammar='root ::= "a"').request_fields() == {"structured_outputs": {"grammar": 'root ::= "a"'}}
    assert output_format() is None  # free text: nothing added to the request


@pytest.mark.vllm  # no engine runs, but importing vLLM's request models takes ~20 s here
def test_vllms_own_request_models_read_the_fields():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for kind, fmt in (("json", output_format(json_schema=Person)), ("choice", output_format(choice=["a", "b"])),
                      ("regex", output_format(regex=DATE)), ("grammar", output_format(grammar='root ::= "a"'))):
        request = ChatCompletionRequest.model_validate({**chat, **fmt.request_fields("vllm", "chat")})
        assert getattr(request.extract_structured_outputs(), kind) == fmt.spec
        request = CompletionRequest.model_validate({"model": "m", "prompt": "hi",
                                                    **fmt.request_fields("vllm", "completion")})
        assert getattr(request.extract_structured_outputs(), kind) == fmt.spec


def test_the_fields_travel_in_extra_body_beside_top_k():
    keywords = request_params({"top_k": 5, "temperature": None, "max_tokens": 9,
                               "extra_body": {"structured_outputs": {"regex": "x"}}})
    assert keywords == {"max_tokens": 9, "extra_body": {"structured_outputs": {"regex": "x"}, "top_k": 5}}


def test_llamacpp_gets_its_own_fields_and_refuses_a_regex_in_one_line():
    assert output_format(json_schema=Person).request_fields("llamacpp", "chat") == {
        "response_format": {"type": "json_object", "schema": Person.model_json_schema()}}
    tricky = ['say "hi"', "back\\slash", "line\nbreak"]
    grammar = output_format(choice=tricky).request_fields("llamacpp", "chat")["grammar"]
    # llama.cpp's own GBNF parser accepts the grammar a choice list becomes (quotes and escapes included).
    from llama_cpp import LlamaGrammar

    assert LlamaGrammar.from_string(grammar, verbose=False) is not None
    completion = output_format(json_schema=Person).request_fields("llamacpp", "completion")["grammar"]
    assert LlamaGrammar.from_string(completion, verbose=False) is not None and "root" in completion
    with pytest.raises(ConfigError) as info:
        output_format(regex=DATE).request_fields("llamacpp", "chat")
    assert "not on the llama.cpp engine" in one_line(info.value)


def test_bad_combinations_and_values_are_one_line_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        output_format(json_schema=Person, choice=["a"])
    assert one_line(info.value).startswith("json_schema and choice:")
    with pytest.raises(ConfigError) as info:
        output_format(choice=["a"], regex="x", grammar="root ::= x")
    assert one_line(info.value).startswith("choice and regex and grammar:")
    for bad in ("yes,no", [], ["a", ""], [1, 2]):
        with pytest.raises(ConfigError, match="^choice: give a non-empty list"):
            output_format(choice=bad)
    with pytest.raises(ConfigError) as info:
        output_format(json_schema=str(tmp_path / "missing.json"))
    assert "cannot read" in one_line(info.value) and "missing.json" in str(info.value)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError) as info:
        output_format(json_schema=tmp_path / "broken.json")
    assert "is not JSON" in one_line(info.value)
    with pytest.raises(ConfigError) as info:  # checked before anything is sent (jsonschema is installed here)
        output_format(json_schema={"type": "object", "properties": {"n": {"type": "nonsense"}}})
    assert "not a valid JSON schema at properties/n/type" in one_line(info.value)
    with pytest.raises(ConfigError, match="^json_schema: give a pydantic model class"):
        output_format(json_schema=42)
    with pytest.raises(ConfigError, match="^grammar: give EBNF/GBNF text"):
        output_format(grammar="  ")


def test_a_schema_file_and_a_grammar_file_are_read(tmp_path):
    path = tmp_path / "city.json"
    path.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}))
    assert output_format(json_schema=str(path)) == OutputFormat("json", json.loads(path.read_text()))
    (tmp_path / "yn.gbnf").write_text('root ::= "yes" | "no"\n')
    assert output_format(grammar=tmp_path / "yn.gbnf").spec == 'root ::= "yes" | "no"\n'


# -- fast: the answer becomes a value, or one line saying why not ------------------------------------


def test_an_answer_cut_at_max_tokens_is_an_error_never_a_half_value():
    fmt = output_format(json_schema=Person)
    for text in ('{"name": "Al', '{"name": "Al", "age": 3'):  # the second would even parse as far as it goes
        with pytest.raises(StructuredOutputError) as info:
            fmt.value_of(text, stats("length", tokens=12))
        message = one_line(info.value)
        assert "cut at max_tokens (12 tokens)" in message and "raise max_tokens (e.g. max_tokens=64)" in message
        assert info.value.text == text  # what came is kept on the error
    with pytest.raises(StructuredOutputError, match=r"cut at max_tokens before the choice"):
        output_format(choice=["yes"]).value_of("ye", stats("length", tokens=None))  # llama.cpp: no usage
    with pytest.raises(StructuredOutputError, match="ended early .finish_reason None"):
        fmt.value_of('{"name": "Al", "age": 3}', stats(None))


def test_values_are_parsed_and_checked():
    assert output_format(json_schema=Person).value_of('{"name": "Al", "age": 3}', stats("stop")) == Person(
        name="Al", age=3)
    with pytest.raises(StructuredOutputError) as info:
        output_format(json_schema=Person).value_of('{"name": "Al", "age": "old"}', stats("stop"))
    assert "does not fit Person: age:" in one_line(info.value)
    with pytest.raises(StructuredOutputError, match="not valid JSON"):
        output_format(json_schema=Person).value_of("Alice is 30", stats("stop"))
    # A dict schema is checked with jsonschema: a bound the server's grammar may not enforce still counts.
    schema = {"type": "object", "properties": {"year": {"type": "integer", "minimum": 1900}}, "required": ["year"]}
    assert output_format(json_schema=schema).value_of('{"year": 1999}', stats("stop")) == {"year": 1999}
    with pytest.raises(StructuredOutputError) as info:
        output_format(json_schema=schema).value_of('{"year": 12}', stats("stop"))
    assert "does not fit the schema: year: 12 is less than the minimum of 1900" in one_line(info.value)
    assert output_format(choice=["yes", "no"]).value_of("no", stats("stop")) == "no"
    with pytest.raises(StructuredOutputError, match="is none of the choices"):
        output_format(choice=["yes", "no"]).value_of("maybe", stats("stop"))
    assert output_format(regex=DATE).value_of("1945-09-02", stats("stop")) == "1945-09-02"
    with pytest.raises(StructuredOutputError, match="does not match the regex"):
        output_format(regex=DATE).value_of("1945-09-02 and more", stats("stop"))


def test_reply_has_value_and_finish_reason():
    reply = Reply("yes", stats("stop"), "yes")
    assert (reply.value, reply.finish_reason, str(reply)) == ("yes", "stop", "yes")
    assert Reply("x", StreamStats()).value is None


# -- fast: the magics' flags, before any server is asked ----------------------------------------------


def test_the_magics_flags_fail_in_one_line_before_any_request(ip, tmp_path):
    for magic in ("vllm_chat", "vllm_generate"):
        for line, expected in (
            ("--json-schema Nobody hi", "--json-schema: 'Nobody' is neither a .json file nor a name in the notebook"),
            ("--choice a,b --regex x hi", "choice and regex: structured output takes one of"),
            (f"--grammar {tmp_path}/none.gbnf hi", "grammar: cannot read"),
            ("--json-schema Person --choice a hi", "json_schema and choice:"),
        ):
            ip.user_ns["Person"] = Person
            with pytest.raises(UsageError) as info:
                ip.run_line_magic(magic, line)
            assert expected in one_line(info.value), (magic, line, str(info.value))
    assert "--json-schema FILE_OR_NAME" in ip.magics_manager.magics["line"]["vllm_chat"].__doc__


def test_the_panel_reads_its_output_format_widgets():
    from mixvllm_nb.panel.chat import format_from_widgets, render_value

    assert format_from_widgets("free text", "ignored") is None
    assert format_from_widgets("choice", "yes, no ,maybe").spec == ["yes", "no", "maybe"]
    assert format_from_widgets("regex", f" {DATE}\n").spec == DATE
    assert format_from_widgets("JSON schema", '{"type": "object"}').spec == {"type": "object"}
    for kind, text, expected in (("JSON schema", "{oops", "does not hold JSON"), ("regex", " ", "fill in the box")):
        with pytest.raises(MixVLLMError) as info:
            format_from_widgets(kind, text)
        assert expected in one_line(info.value)
    assert "&quot;age&quot;: 3" in render_value(Person(name="Al", age=3))


# -- real vLLM (the session's shared server: temperature 0, max_tokens 64) -----------------------------


def test_a_pydantic_schema_comes_back_as_a_valid_instance(vllm_server):
    reply = vllm_server.chat(PERSON_PROMPT, json_schema=Person)
    assert isinstance(reply.value, Person), reply.text
    assert reply.finish_reason == "stop" and Person.model_validate_json(reply.text) == reply.value


def test_a_choice_returns_one_of_the_choices(vllm_server):
    # Choices the model would never say on its own: the constraint, not the model, picks the words.
    choices = ["purple elephant", "green giraffe"]
    reply = vllm_server.chat("What is the capital of France?", choice=choices)
    assert reply.text in choices and reply.value == reply.text and reply.finish_reason == "stop"


def test_a_regex_and_a_grammar_shape_the_text(vllm_server):
    reply = vllm_server.chat("When did the Second World War end? Answer with a date.", regex=DATE)
    assert re.fullmatch(DATE, reply.value), reply.text
    grammar = 'root ::= ("red" | "blue") " " [0-9] [0-9]'
    reply = vllm_server.generate("My favourite colour and number are", grammar=grammar)
    assert re.fullmatch(r"(red|blue) [0-9]{2}", reply.value), reply.text


def test_a_dict_schema_from_a_file_on_plain_completions(vllm_server, tmp_path):
    path = tmp_path / "city.json"
    path.write_text(json.dumps({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                                 "country": {"type": "string", "maxLength": 20}},
                                "required": ["city", "country"], "additionalProperties": False}))
    reply = vllm_server.generate("The capital of France as JSON: ", json_schema=str(path), max_tokens=48)
    assert isinstance(reply.value, dict) and set(reply.value) == {"city", "country"}, reply.text


def test_too_few_tokens_report_truncation_in_one_line(vllm_server):
    with pytest.raises(StructuredOutputError) as info:
        vllm_server.chat(PERSON_PROMPT, json_schema=Person, max_tokens=4)
    assert one_line(info.value) == ("the answer was cut at max_tokens (4 tokens) before the JSON was complete; "
                                    "raise max_tokens (e.g. max_tokens=64)")
    assert info.value.text.startswith("{") and len(info.value.text) < 40


def test_two_formats_at_once_are_refused_before_the_server_is_asked(vllm_server):
    with pytest.raises(ConfigError) as info:
        vllm_server.chat("hi", json_schema=Person, regex="x")
    assert one_line(info.value).startswith("json_schema and regex:")


def test_the_magics_return_the_parsed_value(ip, vllm_server):
    ip.user_ns["Person"] = Person
    ip.run_cell(f"x = %vllm_chat --server {vllm_server.name} --new --json-schema Person {PERSON_PROMPT}")
    assert isinstance(ip.user_ns["x"], Person)
    ip.run_cell(f"y = %vllm_generate --server {vllm_server.name} --choice north,south The sun rises in the")
    assert ip.user_ns["y"] in ("north", "south")
    # IPython expands {n} in a magic line, so the magic's help says to write {{n}}.
    value = ip.run_line_magic("vllm_chat", f"--server {vllm_server.name} --new --regex "
                              "[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}} When did the Second World War end? Answer with a date.")
    assert re.fullmatch(DATE, value), value
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("vllm_chat", f"--server {vllm_server.name} --new --json-schema Person --max-tokens 3 hi")
    assert "cut at max_tokens (3 tokens)" in one_line(info.value)


def test_the_panel_chat_shows_the_parsed_value_or_the_error(vllm_server):
    from mixvllm_nb.panel import ControlPanel

    p = ControlPanel(vllm_server.name, interval=0.5)
    try:
        chat = p.chat
        chat.output_format.value = "JSON schema"
        assert chat.format_spec.layout.display is None  # the box appears with the selector
        chat.format_spec.value = json.dumps(Person.model_json_schema())
        chat.send(PERSON_PROMPT)
        chat.wait(120)
        value = chat.last_value
        assert set(value) == {"name", "age"} and isinstance(value["age"], int), chat.last_answer
        assert "Value:" in chat.result.value and "&quot;name&quot;" in chat.result.value
        assert "structured_outputs" in chat.show_code()  # the copied code asks for the same format
        p.sampling.sliders["max_tokens"].value = 4
        chat.send(PERSON_PROMPT)
        chat.wait(120)
        assert chat.last_value is None and "cut at max_tokens (4 tokens)" in chat.result.value
        assert p.errors.message == ""  # shown in the result line, not as a failure of the panel
    finally:
        p.close()


# -- the light engine (llama.cpp): what its server supports, and one line for what it does not ----------


@pytest.fixture(scope="module")
def light_server():
    from mixvllm_nb.api import server_for_config
    from mixvllm_nb.config import config_from_dict

    server = server_for_config(config_from_dict({"backend": "llamacpp", "server": {"name": "light-structured"},
                                                 "generation_defaults": {"temperature": 0.0, "max_tokens": 48}}))
    server.start()
    yield server
    report = server.stop()
    assert report.clean, report.summary()


@pytest.mark.vllm
def test_llamacpp_answers_a_schema_and_a_choice_and_refuses_a_regex(light_server):
    assert isinstance(light_server.chat(PERSON_PROMPT, json_schema=Person).value, Person)
    assert isinstance(light_server.generate("A person as JSON: ", json_schema=Person).value, Person)
    assert light_server.chat("What is the capital of France?", choice=["purple elephant", "green giraffe"]).value in (
        "purple elephant", "green giraffe")
    with pytest.raises(ConfigError) as info:
        light_server.chat("hi", regex=DATE)
    assert "not on the llama.cpp engine" in one_line(info.value)
    with pytest.raises(StructuredOutputError) as info:
        light_server.chat(PERSON_PROMPT, json_schema=Person, max_tokens=4)
    assert one_line(info.value).startswith("the answer was cut at max_tokens before the JSON was complete")
