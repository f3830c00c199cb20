"""``mixvllm-chat`` as a user runs it: a process reading lines from its standard input.

Answers come from the session's real vLLM server; what the client sends (system prompt, history,
temperature) is read off the stand-in upstream's record of each request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_server_support import STANDIN_MODEL, registered_upstream


def run_chat(lines: list[str], env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the chat with ``lines`` typed in; the input ends after them, as with Ctrl+D."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MIXVLLM_SERVER", "MIXVLLM_CHAT_TOKEN_FILE")}
    return subprocess.run([sys.executable, "-m", "mixvllm_nb.chat", *args], input="\n".join(lines) + "\n",
                          env={**clean, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def upstream():
    with registered_upstream("chat-standin", api_key="sk-chat", events=3, interval=0.01) as stand_in:
        yield stand_in


def test_chat_answers_directly_from_the_environment(vllm_server):
    env = {"OPENAI_BASE_URL": f"{vllm_server.base_url}/v1", "OPENAI_API_KEY": vllm_server.api_key}
    result = run_chat(["What is the capital of France?", "/exit"], env)
    assert result.returncode == 0, result.stderr
    assert vllm_server.served_model_name in result.stdout  # the banner names the model it found
    answer = result.stdout.split("you> ")[1]
    assert "Paris" in answer


def test_chat_finds_a_server_by_its_registry_name(vllm_server):
    result = run_chat(["What is the capital of France?"], {"MIXVLLM_SERVER": vllm_server.name})
    assert result.returncode == 0, result.stderr  # end of input (Ctrl+D) quits cleanly
    assert f"at {vllm_server.name}." in result.stdout and "Paris" in result.stdout


def test_system_temperature_history_and_reset_reach_the_server(upstream):
    lines = ["/system Answer in one word.", "/temperature 0.3", "first", "second", "/reset", "third",
             "/temperature 5", "/temperature", "fourth", "/system", "fifth", "/nonsense", "/help"]
    result = run_chat(lines, {"MIXVLLM_SERVER": "chat-standin"})
    assert result.returncode == 0, result.stderr
    chats = [hit.json() for hit in upstream.hits if hit.path == "/v1/chat/completions"]
    assert [c["messages"][-1]["content"] for c in chats] == ["first", "second", "third", "fourth", "fifth"]
    system = {"role": "system", "content": "Answer in one word."}
    assert chats[0]["messages"] == [system, {"role": "user", "content": "first"}]
    assert chats[1]["messages"] == [system, {"role": "user", "content": "first"},
                                    {"role": "assistant", "content": "tok0 tok1 tok2 "},
                                    {"role": "user", "content": "second"}]
    assert chats[2]["messages"] == [system, {"role": "user", "content": "third"}]  # /reset kept the system prompt
    assert [c.get("temperature") for c in chats] == [0.3, 0.3, 0.3, None, None]  # 5 refused, then unset
    assert chats[4]["messages"][0]["role"] == "user"  # /system alone cleared it
    assert all(c["stream"] and c["model"] == STANDIN_MODEL for c in chats)
    assert "not allowed" in result.stdout and "unknown command /nonsense" in result.stdout
    assert "/temperature VALUE" in result.stdout and "/top_p VALUE" in result.stdout  # the help, from the config
    assert result.stdout.count("tok0 tok1 tok2") == 5


def test_chat_with_a_wrong_key_says_so_and_keeps_going(upstream):
    env = {"OPENAI_BASE_URL": f"{upstream.url}/v1", "OPENAI_API_KEY": "wrong"}
    result = run_chat(["hello"], env, "--model", STANDIN_MODEL)
    assert result.returncode == 0
    assert "[error: AuthenticationError" in result.stdout


def test_chat_with_an_unknown_server_name_exits_with_a_hint():
    result = run_chat([], {"MIXVLLM_SERVER": "nobody"})
    assert result.returncode != 0 and "no server named 'nobody'" in result.stderr


def test_chat_that_cannot_reach_its_server_exits_with_a_hint():
    from mixvllm_nb.process.ports import free_port

    result = run_chat([], {"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    assert result.returncode == 1 and "cannot reach" in result.stderr


def test_max_tokens_and_bare_exit_quit_the_chat(upstream):
    lines = ["/max_tokens 7", "first", "/max_tokens zero", "/max_tokens", "second", "quit", "never sent"]
    result = run_chat(lines, {"MIXVLLM_SERVER": "chat-standin"}, "--max-tokens", "3")
    assert result.returncode == 0, result.stderr
    chats = [hit.json() for hit in upstream.hits if hit.path == "/v1/chat/completions"]
    assert [c["messages"][-1]["content"] for c in chats] == ["first", "second"]  # "quit" ended it
    assert [c.get("max_tokens") for c in chats] == [7, None]  # the flag's 3, then 7, then the server's
    assert "[max_tokens 'zero' is not allowed: give a whole number at least 1, at most 1,000,000]" in result.stdout



def token_file(tmp_path, data: dict, mode: int = 0o600) -> str:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return str(path)


def test_chat_takes_url_and_key_from_its_token_file_over_the_openai_variables(upstream, tmp_path):
    # As in a chat terminal: the file names the proxy and holds the token; a profile's OPENAI_* must
    # not redirect the key elsewhere.
    path = token_file(tmp_path, {"server": "chat-standin", "base_url": f"{upstream.url}/v1", "api_key": "sk-chat"})
    env = {"MIXVLLM_CHAT_TOKEN_FILE": path, "MIXVLLM_SERVER": "chat-standin",
           "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "from-a-profile"}
    result = run_chat(["hello"], env)
    assert result.returncode == 0, result.stderr
    assert f"at {upstream.url}/v1." in result.stdout and "tok0 tok1 tok2" in result.stdout
    (chat,) = [hit for hit in upstream.hits if hit.path == "/v1/chat/completions"]
    assert {k.lower(): v for k, v in chat.headers.items()}["authorization"] == "Bearer sk-chat"


def test_chat_asked_for_another_server_does_not_send_the_token_file_s_key_there(upstream, tmp_path):
    path = token_file(tmp_path, {"server": "other", "base_url": "http://127.0.0.1:9/v1", "api_key": "jupyter-token"})
    result = run_chat(["hello"], {"MIXVLLM_CHAT_TOKEN_FILE": path}, "--server", "chat-standin")
    assert result.returncode == 0, result.stderr
    assert "at chat-standin." in result.stdout and "tok0 tok1 tok2" in result.stdout  # from the registry


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_chat_refuses_a_token_file_others_can_read(upstream, tmp_path, mode):
    path = token_file(tmp_path, {"server": "chat-standin", "base_url": f"{upstream.url}/v1", "api_key": "sk-chat"},
                      mode)
    result = run_chat([], {"MIXVLLM_CHAT_TOKEN_FILE": path})
    assert result.returncode != 0 and "must be yours and mode 0600" in result.stderr
    assert f"(it is {mode:04o})" in result.stderr and upstream.hits == []


def test_chat_with_a_broken_token_file_says_so(tmp_path):
    path = token_file(tmp_path, {"server": "x"})
    result = run_chat([], {"MIXVLLM_CHAT_TOKEN_FILE": path})
    assert result.returncode != 0 and "is not a chat credentials file" in result.stderr
    result = run_chat([], {"MIXVLLM_CHAT_TOKEN_FILE": str(tmp_path / "missing.json")})
    assert result.returncode != 0 and "No such file" in result.stderr
