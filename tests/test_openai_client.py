"""The shared OpenAI-compatible chat client (the openai SDK underneath), over real HTTP (tests/chat_server.py)."""

from __future__ import annotations

import email.utils
import multiprocessing
import os
import socket
import time

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient, chat_base_url
from tests.chat_server import ChatServer, Fault

MODEL = "test-llm"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
KEY = "sk-secret-1"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# ---------------------------------------------------------------- what is sent

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


def test_one_client_reuses_its_connection():
    with ChatServer(handler=lambda r: "ok") as srv:
        client = ChatClient(srv.base_url, MODEL)
        for _ in range(3):
            client.complete(MESSAGES)
    ports = {r.client_port for r in srv.requests}
    assert len(srv.requests) == 3 and len(ports) == 1


def test_the_key_is_sent_but_never_shown():
    with ChatServer(api_key=KEY) as srv:
        client = ChatClient(srv.base_url, MODEL, api_key=KEY)
        client.complete([{"role": "user", "content": "hi"}])
    assert srv.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(client)


def test_without_a_key_no_authorization_header_is_sent():
    with ChatServer() as srv:
        ChatClient(srv.base_url, MODEL).complete(MESSAGES)
    assert "Authorization" not in srv.requests[0].headers


# ---------------------------------------------------------------- retries

def test_transient_failures_are_retried_then_succeed():
    # The first waits the SDK's backoff (~0.5 s); the others wait the 0.1 s their Retry-After asks.
    faults = [Fault(status=500)] + [Fault(status=s, retry_after="0.1") for s in (503, 429, 408, 409)]
    with ChatServer(handler=lambda r: "ok", faults=faults) as srv:
        reply = ChatClient(srv.base_url, MODEL, retries=5).complete(MESSAGES)
    assert reply == "ok" and [r.status for r in srv.requests] == [500, 503, 429, 408, 409, 200]
    # every attempt carries the same request
    assert all(r.payload == srv.requests[0].payload for r in srv.requests)


def test_a_retry_waits_as_long_as_retry_after_asks():
    in_two_seconds = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s away
    with ChatServer(handler=lambda r: "ok",
                    faults=[Fault(status=503, retry_after=in_two_seconds), Fault(status=429, retry_after="1")]) as srv:
        assert ChatClient(srv.base_url, MODEL, retries=2).complete(MESSAGES) == "ok"
    first, second, third = srv.requests
    assert second.started - first.finished >= 0.9   # an HTTP date
    assert third.started - second.finished >= 0.9   # delta-seconds


def test_a_retry_after_beyond_two_minutes_is_not_waited_for():
    # The SDK honours Retry-After up to 120 s; asked for more, it gives up at once.
    with ChatServer(faults=lambda i: Fault(status=429, retry_after="600")) as srv:
        started = time.monotonic()
        with pytest.raises(InputError, match=r"after 1 attempt.*HTTP 429: injected fault 429 \(Retry-After: 600\)"):
            ChatClient(srv.base_url, MODEL, retries=3).complete(MESSAGES)
    assert len(srv.requests) == 1 and time.monotonic() - started < 5


def test_timing_counts_the_successful_attempt_only():
    with ChatServer(handler=lambda r: "ok", faults=[Fault(status=503, retry_after="1"), Fault(delay=0.2)]) as srv:
        client = ChatClient(srv.base_url, MODEL, retries=2)
        started = time.monotonic()
        reply, seconds = client.complete_timed(MESSAGES)
        elapsed = time.monotonic() - started
    assert reply == "ok" and [r.status for r in srv.requests] == [503, 200]
    assert elapsed >= 1.1                 # the Retry-After wait and the slow answer both happened
    assert 0.2 <= seconds < 0.9           # only the answering attempt is counted


def test_a_timed_out_attempt_is_retried():
    with ChatServer(handler=lambda r: "ok", faults=[Fault(delay=3.0)]) as srv:
        reply, seconds = ChatClient(srv.base_url, MODEL, timeout=0.3, retries=1).complete_timed(MESSAGES)
    assert reply == "ok" and len(srv.requests) == 2 and seconds < 0.3


# ---------------------------------------------------------------- failures: one line, no retry when pointless

def test_persistent_failures_name_the_url_the_context_and_the_last_status_on_one_line():
    with ChatServer(faults=lambda i: Fault(status=502)) as srv:
        client = ChatClient(srv.base_url, MODEL, retries=1, what="llm policy")
        with pytest.raises(InputError) as err:
            client.complete(MESSAGES, context="question q7 round 3")
    message = str(err.value)
    assert len(srv.requests) == 2
    assert message.startswith("llm policy: ") and srv.base_url + "/chat/completions" in message
    assert "question q7 round 3" in message and "HTTP 502: injected fault 502" in message
    assert "after 2 attempt" in message and MODEL in message and "\n" not in message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_permanent_4xx_fails_at_once(status):
    with ChatServer(faults=lambda i: Fault(status=status, message=f"nope {status}")) as srv:
        client = ChatClient(srv.base_url, MODEL, retries=4, serves=" with image input")
        started = time.monotonic()
        with pytest.raises(InputError) as err:
            client.complete(MESSAGES, context="video v segment (1, 2, 3)")
    message = str(err.value)
    assert len(srv.requests) == 1 and time.monotonic() - started < 2
    assert f"HTTP {status}: nope {status}" in message and "video v segment (1, 2, 3)" in message
    assert f"serves model {MODEL!r} with image input" in message and "API key" in message
    assert "\n" not in message


def test_an_unreachable_endpoint_gives_one_clear_line():
    port = free_port()
    client = ChatClient(f"http://127.0.0.1:{port}", MODEL, api_key=KEY, retries=1, what="video_qa")
    with pytest.raises(InputError) as err:
        client.complete(MESSAGES, context="video v")
    message = str(err.value)
    assert message.startswith(f"video_qa: http://127.0.0.1:{port}/v1/chat/completions failed on video v after "
                              "2 attempt(s), last error: connection failed (")
    assert "is running" in message and "\n" not in message and KEY not in message


def test_a_persistent_timeout_is_reported_after_the_retries():
    with ChatServer(delay=3.0) as srv:
        with pytest.raises(InputError, match=r"after 2 attempt.*no answer within 0\.3 s \(timed out\).*is running"):
            ChatClient(srv.base_url, MODEL, timeout=0.3, retries=1).complete(MESSAGES)
    assert len(srv.requests) == 2


@pytest.mark.parametrize("body, content_type, says", [
    (b'{"id": "chatcmpl-1", "choices": [', "application/json", "not valid JSON (starts with '{\"id\""),
    (b"<html><body>Bad gateway</body></html>", "text/html", "not valid JSON (starts with '<html>"),
    (b'{"object": "chat.completion", "choices": []}', "application/json", "no choices[0].message.content"),
    (b'{"error": "none"}', "application/json", "no choices[0].message.content"),
    (b'{"choices": [{"message": {"role": "assistant", "content": null}}]}', "application/json",
     "content is NoneType, not text"),
])
def test_a_malformed_answer_fails_at_once_with_a_clear_line(body, content_type, says):
    with ChatServer(faults=[Fault(body=body, content_type=content_type)]) as srv:
        with pytest.raises(InputError) as err:
            ChatClient(srv.base_url, MODEL, retries=3).complete(MESSAGES)
    message = str(err.value)
    assert len(srv.requests) == 1
    assert says in message and "OpenAI" in message and srv.base_url in message and "\n" not in message


def test_content_parts_are_joined():
    body = b'{"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "a"}, ' \
           b'{"type": "text", "text": "b"}]}}]}'
    with ChatServer(faults=[Fault(body=body)]) as srv:
        assert ChatClient(srv.base_url, MODEL).complete(MESSAGES) == "ab"


def test_the_api_key_never_appears_in_a_message_even_when_the_server_echoes_it():
    echo = Fault(status=401, message=f"Incorrect API key provided: {KEY}")
    for faults in ([echo], lambda i: Fault(status=500, message=f"backend rejected {KEY}")):
        with ChatServer(faults=faults) as srv:
            client = ChatClient(srv.base_url, MODEL, api_key=KEY, retries=1)
            with pytest.raises(InputError) as err:
                client.complete(MESSAGES)
        assert KEY not in str(err.value) and "[API key]" in str(err.value)
        assert KEY not in repr(client)


def test_a_short_key_is_cut_out_without_mangling_names_that_contain_it():
    with ChatServer(faults=[Fault(status=403, message="key tok refused for tok-model")]) as srv:
        with pytest.raises(InputError) as err:
            ChatClient(srv.base_url, "tok-model", api_key="tok").complete(MESSAGES)
    assert "HTTP 403: key [API key] refused for tok-model" in str(err.value)
    assert "serves model 'tok-model'" in str(err.value)


def test_the_key_from_the_environment_is_used_and_not_shown(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ChatServer(api_key="sk-other") as srv:
        client = ChatClient(srv.base_url, MODEL)
        with pytest.raises(InputError, match="HTTP 401") as err:
            client.complete(MESSAGES)
    assert srv.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in str(err.value) and KEY not in repr(client)


def test_bad_settings_and_endpoints_are_input_errors():
    with pytest.raises(InputError, match="no model"):
        ChatClient("http://127.0.0.1:9/v1", "")
    with pytest.raises(InputError, match="timeout"):
        ChatClient("http://127.0.0.1:9/v1", MODEL, timeout=0)
    with pytest.raises(InputError, match="retries"):
        ChatClient("http://127.0.0.1:9/v1", MODEL, retries=-1)
    with pytest.raises(InputError, match="http"):
        chat_base_url("127.0.0.1:8000")
    assert chat_base_url("http://h:1/v1/chat/completions/") == "http://h:1/v1"


# ---------------------------------------------------------------- many requests at once (AsyncOpenAI)

def test_submitted_requests_run_concurrently_and_keep_their_answers():
    with ChatServer(handler=lambda r: r.texts[-1].upper(), delay=0.3) as srv:
        client = ChatClient(srv.base_url, MODEL)
        futures = [client.submit([{"role": "user", "content": f"q{i}"}], context=f"q{i}") for i in range(6)]
        answers = [f.result(timeout=10) for f in futures]
        client.close()
    assert [text for text, _ in answers] == [f"Q{i}" for i in range(6)]
    assert all(0.3 <= seconds < 2 for _, seconds in answers)
    assert srv.max_in_flight == 6


def test_a_submitted_request_fails_with_the_same_one_line_error():
    with ChatServer(faults=lambda i: Fault(status=500)) as srv:
        future = ChatClient(srv.base_url, MODEL, retries=1, what="openai captioner").submit(
            MESSAGES, context="video v high segment (1,)")
        with pytest.raises(InputError, match=r"^openai captioner: .*video v high segment \(1,\) after 2 attempt"
                                             r".*HTTP 500"):
            future.result(timeout=10)


def test_cancelling_a_submitted_request_stops_its_retries_at_once():
    with ChatServer(faults=lambda i: Fault(status=503)) as srv:
        future = ChatClient(srv.base_url, MODEL, retries=5).submit(MESSAGES)
        wait_for(lambda: srv.requests and srv.requests[0].status == 503)
        assert future.cancel()
        time.sleep(1.5)  # unstopped, the SDK would have retried twice by now (after ≤0.5 s and ≤1 s more)
    assert len(srv.requests) == 1 and future.cancelled()


def _use_in_child(client: ChatClient) -> None:
    ok = False
    try:
        ok = client.complete(MESSAGES) == "ok" and client.submit(MESSAGES).result(timeout=10)[0] == "ok"
    finally:
        os._exit(0 if ok else 1)


def test_a_client_used_before_a_fork_works_in_the_child():
    with ChatServer(handler=lambda r: "ok") as srv:
        client = ChatClient(srv.base_url, MODEL)
        assert client.complete(MESSAGES) == "ok" and client.submit(MESSAGES).result(timeout=10)[0] == "ok"
        # The child must open its own connections and event loop thread, not use the parent's.
        child = multiprocessing.get_context("fork").Process(target=_use_in_child, args=(client,))
        child.start()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
        assert client.complete(MESSAGES) == "ok"  # the parent's connections are still good
        client.close()
    assert child.exitcode == 0 and len(srv.requests) == 5
