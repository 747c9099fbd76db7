"""The shared OpenAI-compatible chat client, over real HTTP (tests/chat_server.py)."""

from __future__ import annotations

import threading
import time

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient, chat_base_url
from tests.chat_server import ChatServer, Fault

MODEL = "test-llm"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_stop_max_tokens_temperature_and_extra_reach_the_server():
    with ChatServer(handler=lambda r: "<think>go</think><tool>get_caption((1, 2))") as srv:
        client = ChatClient(srv.base_url, MODEL)
        reply = client.complete(MESSAGES, max_tokens=77, temperature=0.6, stop=["</tool>", "</answer>"],
                                extra={"top_p": 0.9, "skip_special_tokens": False})
    assert reply == "<think>go</think><tool>get_caption((1, 2))"
    body = srv.requests[0].payload
    assert body["model"] == MODEL and body["messages"] == MESSAGES
    assert body["max_tokens"] == 77 and body["temperature"] == 0.6
    assert body["stop"] == ["</tool>", "</answer>"]
    assert body["top_p"] == 0.9 and body["skip_special_tokens"] is False


def test_options_left_out_are_not_sent():
    with ChatServer(handler=lambda r: "ok") as srv:
        ChatClient(srv.base_url, MODEL).complete(MESSAGES)
    assert set(srv.requests[0].payload) == {"model", "messages"}


def test_timing_counts_the_successful_attempt_only():
    with ChatServer(handler=lambda r: "ok", faults=[Fault(status=503, retry_after="1"), Fault(delay=0.2)]) as srv:
        client = ChatClient(srv.base_url, MODEL, retries=2, backoff=0.01)
        started = time.monotonic()
        reply, seconds = client.complete_timed(MESSAGES)
        elapsed = time.monotonic() - started
    assert reply == "ok" and [r.status for r in srv.requests] == [503, 200]
    assert elapsed >= 1.1                 # the Retry-After wait and the slow answer both happened
    assert 0.2 <= seconds < 0.9           # only the answering attempt is counted


def test_failures_name_the_url_the_context_and_the_last_status_on_one_line():
    with ChatServer(faults=lambda i: Fault(status=502)) as srv:
        client = ChatClient(srv.base_url, MODEL, retries=1, backoff=0.01, what="llm policy")
        with pytest.raises(InputError) as err:
            client.complete(MESSAGES, context="question q7 round 3")
    message = str(err.value)
    assert message.startswith("llm policy: ") and srv.base_url + "/chat/completions" in message
    assert "question q7 round 3" in message and "HTTP 502" in message and "2 attempt" in message
    assert MODEL in message and "\n" not in message


def test_a_set_abort_event_stops_the_retries():
    abort = threading.Event()
    abort.set()
    with ChatServer(faults=lambda i: Fault(status=500)) as srv:
        with pytest.raises(InputError, match="1 attempt"):
            ChatClient(srv.base_url, MODEL, retries=5, backoff=5.0).complete(MESSAGES, abort=abort)
    assert len(srv.requests) == 1


def test_bad_settings_and_endpoints_are_input_errors():
    with pytest.raises(InputError, match="no model"):
        ChatClient("http://127.0.0.1:9/v1", "")
    with pytest.raises(InputError, match="timeout"):
        ChatClient("http://127.0.0.1:9/v1", MODEL, timeout=0)
    with pytest.raises(InputError, match="http"):
        chat_base_url("127.0.0.1:8000")
    assert chat_base_url("http://h:1/v1/chat/completions/") == "http://h:1/v1"


def test_the_key_is_sent_but_never_shown():
    with ChatServer(api_key="sk-secret-1") as srv:
        client = ChatClient(srv.base_url, MODEL, api_key="sk-secret-1")
        client.complete([{"role": "user", "content": "hi"}])
    assert srv.requests[0].headers["Authorization"] == "Bearer sk-secret-1"
    assert "sk-secret-1" not in repr(client)
