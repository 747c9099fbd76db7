"""The client for OpenAI-compatible ``/chat/completions`` endpoints (vLLM, SGLang, OpenAI itself).

Shared by the captioner (``corpus.captioners.openai_api``), the video_qa tool (``agent.video_qa``)
and the LLM navigator. HTTP, connection reuse, timeouts and retries are the ``openai`` SDK's; this
module adds what the platform needs around it:

- :class:`ChatClient` holds one ``openai.OpenAI`` client (its connection pool is reused by every
  call, from any thread) and, once :meth:`ChatClient.submit` is first used, one
  ``openai.AsyncOpenAI`` client on a private event-loop thread, for callers that keep many requests
  in flight (the captioner). Both are made per process, so a client built before a fork is safe.
- Retries: the SDK resends a request after a connection error, a timeout, or HTTP 408, 409, 429 or
  5xx, at most ``retries`` times. It waits exactly as long as a ``Retry-After`` (or
  ``retry-after-ms``) header asks when that is between 0 and 120 s, and gives up at once when it asks
  for more; otherwise it backs off 0.5 s, 1 s, 2 s, … up to 8 s, each cut by up to 25 % at random.
  Other statuses (400, 401, 404, …) and a body that is not a chat completion fail at once.
- Every failure that ends a call is an :class:`~longvideo_r1.errors.InputError` on one line naming
  the URL, what the request was for, the number of attempts, the last error and what to check. The
  API key is never in a message or a ``repr`` (it is cut out of server messages that echo it).
  A failure worth retrying later (what the SDK retries) is a :class:`TransientError`, carrying the
  last error and the server's ``Retry-After``, for callers that retry on their own.
- ``timeout`` bounds each phase of an attempt (connecting, waiting for the next bytes of the
  answer, sending), as httpx timeouts do; it is not a bound on the whole call.

:meth:`ChatClient.complete_timed` also returns the seconds of the attempt that succeeded, as the
paper's cost accounting counts the model's time per call (PROTOCOL §2); :meth:`ChatClient.complete_counted`
adds the prompt and completion tokens the server reported in ``usage``. The seconds are
httpx's ``Response.elapsed`` of that attempt: from handing the request to the connection pool
(opening a connection when none is idle) to reading the last byte of the answer. Failed attempts,
retry waits, building the request and parsing the answer are left out; the network round trip and
any queueing on the server are in (small on a local server).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import os
import re
import threading
from concurrent.futures import Future
from typing import Any, Sequence

import numpy as np

from longvideo_r1.errors import InputError

# Statuses the SDK retries besides every 5xx (and connection errors and timeouts).
RETRYABLE_STATUS = frozenset({408, 409, 429})
NO_KEY = "no-key"  # the SDK insists on a key; without one, requests omit the Authorization header

# The attempts made by the call running in this thread or task (counted by an httpx request hook).
_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("lvr1_chat_attempts", default=None)


def _count_attempt(request) -> None:
    attempts = _ATTEMPTS.get()
    if attempts is not None:
        attempts[0] += 1


async def _count_attempt_async(request) -> None:
    _count_attempt(request)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The body of a client's event loop thread: serve requests until :meth:`ChatClient.close`."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def chat_base_url(endpoint: str, what: str = "openai endpoint") -> str:
    """``http://host:port/v1`` from a base URL given with or without ``/v1`` (or the full route)."""
    url = str(endpoint).strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"{what}: endpoint {endpoint!r} is not an http(s) base URL; give one such as "
                         "http://127.0.0.1:8000/v1")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    if not url.endswith("/v1"):
        url += "/v1"
    return url


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,…`` URL of one RGB (or grey) frame."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class TransientError(InputError):
    """A call that failed in a way worth trying again later: a connection error, a timeout, or HTTP 408,
    409, 429 or 5xx. ``last`` is the last error (API key cut out); ``retry_after`` the seconds the
    server asked to wait (``Retry-After`` / ``retry-after-ms``), None when it asked nothing. Callers
    that retry on their own (the captioner, over several endpoints) read them."""

    def __init__(self, message: str, last: str, retry_after: float | None = None):
        super().__init__(message)
        self.last = last
        self.retry_after = retry_after


def retry_after_seconds(headers) -> float | None:
    """The wait a response's ``retry-after-ms`` or ``Retry-After`` header (seconds or an HTTP date) asks for."""
    import email.utils
    import time

    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class _BadAnswer(Exception):
    """The server answered 200 with something that is not a chat completion with text."""


class ChatClient:
    """One OpenAI-compatible chat endpoint and model. Safe to share between threads.

    ``retries`` counts the tries after the first (the SDK's ``max_retries``), so a request is sent
    at most ``1 + retries`` times. ``what`` names the caller in error messages (``"openai
    captioner"``, ``"video_qa"``); ``serves`` is appended to the model in the advice, e.g.
    ``" with image input"``. ``api_key`` falls back to ``$OPENAI_API_KEY``; no ``Authorization``
    header is sent when neither is set.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4, what: str = "openai endpoint", serves: str = ""):
        if not model:
            raise InputError(f"{what}: no model given; pass the model name the server serves")
        if not timeout or timeout <= 0:
            raise InputError(f"{what}: timeout must be positive, got {timeout}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"{what}: retries must be a whole number, 0 or more, got {retries!r}")
        self.what = what
        self.serves = serves
        self.base_url = chat_base_url(endpoint, what)
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.timeout = float(timeout)
        self.retries = retries
        self._api_key = (api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")) or None
        self._lock = threading.Lock()
        self._sync: tuple[int, Any] | None = None                 # (pid, openai.OpenAI)
        self._async: tuple[int, asyncio.AbstractEventLoop, Any] | None = None  # (pid, loop, AsyncOpenAI)

    def __repr__(self) -> str:  # never show the API key
        return f"ChatClient(endpoint={self.base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ the SDK clients, per process

    def _sdk_options(self, http_client) -> dict:
        return {"base_url": self.base_url, "api_key": self._api_key or NO_KEY, "timeout": self.timeout,
                "max_retries": self.retries, "http_client": http_client}

    def _sync_client(self):
        with self._lock:
            if self._sync is None or self._sync[0] != os.getpid():
                import openai

                http = openai.DefaultHttpxClient(timeout=self.timeout, event_hooks={"request": [_count_attempt]})
                self._sync = (os.getpid(), openai.OpenAI(**self._sdk_options(http)))
            return self._sync[1]

    def _async_client(self):
        """The event loop thread and the ``AsyncOpenAI`` client bound to it (made on first use)."""
        with self._lock:
            if self._async is None or self._async[0] != os.getpid():
                import openai

                loop = asyncio.new_event_loop()
                threading.Thread(target=_run_loop, args=(loop,), name=f"{self.what} requests", daemon=True).start()
                http = openai.DefaultAsyncHttpxClient(timeout=self.timeout,
                                                      event_hooks={"request": [_count_attempt_async]})
                self._async = (os.getpid(), loop, openai.AsyncOpenAI(**self._sdk_options(http)))
            return self._async[1], self._async[2]

    def close(self) -> None:
        """Close the connections and stop the event loop thread; a later call opens new ones."""
        with self._lock:
            sync, self._sync = self._sync, None
            started, self._async = self._async, None
        if sync is not None and sync[0] == os.getpid():
            sync[1].close()
        if started is not None and started[0] == os.getpid():
            _, loop, client = started
            try:
                asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=5)
            finally:
                loop.call_soon_threadsafe(loop.stop)

    def __enter__(self) -> "ChatClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ requests

    def _arguments(self, messages: Sequence[dict], max_tokens: int | None, temperature: float | None,
                   stop: Sequence[str] | None, extra: dict[str, Any] | None) -> dict:
        """Keyword arguments of ``chat.completions.create``; options left as None are not sent."""
        args: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if max_tokens is not None:
            args["max_tokens"] = int(max_tokens)
        if temperature is not None:
            args["temperature"] = float(temperature)
        if stop:
            args["stop"] = list(stop)
        if extra:
            args["extra_body"] = dict(extra)  # server-specific fields (top_p, skip_special_tokens, …) as given
        if not self._api_key:
            import openai

            args["extra_headers"] = {"Authorization": openai.Omit()}
        return args

    def complete(self, messages: Sequence[dict], *, max_tokens: int | None = None,
                 temperature: float | None = None, stop: Sequence[str] | None = None,
                 extra: dict[str, Any] | None = None, context: str = "") -> str:
        """``choices[0].message.content`` of one chat completion; :class:`InputError` when it cannot be had.

        ``context`` says what the request is for in error messages (``"video X segment (1, 2, 3)"``).
        """
        return self.complete_timed(messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                                   extra=extra, context=context)[0]

    def complete_timed(self, messages: Sequence[dict], *, max_tokens: int | None = None,
                       temperature: float | None = None, stop: Sequence[str] | None = None,
                       extra: dict[str, Any] | None = None, context: str = "") -> tuple[str, float]:
        """Like :meth:`complete`, plus the seconds of the successful attempt alone (see the module doc)."""
        return self.complete_counted(messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                                     extra=extra, context=context)[:2]

    def complete_counted(self, messages: Sequence[dict], *, max_tokens: int | None = None,
                         temperature: float | None = None, stop: Sequence[str] | None = None,
                         extra: dict[str, Any] | None = None,
                         context: str = "") -> tuple[str, float, tuple[int, int]]:
        """Like :meth:`complete_timed`, plus the ``(prompt_tokens, completion_tokens)`` the server
        reported in the answer's ``usage`` (0 for a count it did not send)."""
        import openai

        args = self._arguments(messages, max_tokens, temperature, stop, extra)
        attempts = [0]
        token = _ATTEMPTS.set(attempts)
        try:
            raw = self._sync_client().chat.completions.with_raw_response.create(**args)
        except openai.APIError as exc:
            raise self._failure(exc, attempts[0], context) from None
        finally:
            _ATTEMPTS.reset(token)
        return (*self._answer(raw, context), _reported_tokens(raw))

    def submit(self, messages: Sequence[dict], *, max_tokens: int | None = None,
               temperature: float | None = None, stop: Sequence[str] | None = None,
               extra: dict[str, Any] | None = None, context: str = "") -> Future:
        """Start one request on the client's event loop (``AsyncOpenAI``) and return a
        :class:`concurrent.futures.Future` of ``(text, seconds)``, as :meth:`complete_timed` gives.

        Many requests may be in flight at once over the shared connections; ``future.cancel()``
        stops a request at once, the attempt in flight and any retry wait included.
        """
        args = self._arguments(messages, max_tokens, temperature, stop, extra)
        loop, client = self._async_client()
        return asyncio.run_coroutine_threadsafe(self._complete_async(client, args, context), loop)

    async def _complete_async(self, client, args: dict, context: str) -> tuple[str, float]:
        import openai

        attempts = [0]
        _ATTEMPTS.set(attempts)  # this task's own context
        try:
            raw = await client.chat.completions.with_raw_response.create(**args)
        except openai.APIError as exc:
            raise self._failure(exc, attempts[0], context) from None
        return self._answer(raw, context)

    # ------------------------------------------------------------------ answers and failures

    def _answer(self, raw, context: str) -> tuple[str, float]:
        """The text and the seconds of a 200 answer, or the :class:`InputError` saying why it has none."""
        seconds = raw.http_response.elapsed.total_seconds()
        try:
            return _message_text(raw), seconds
        except _BadAnswer as bad:
            raise self._permanent(str(bad), context) from None

    def _failure(self, exc, attempts: int, context: str) -> InputError:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return self._exhausted(f"no answer within {self.timeout:g} s (timed out)", attempts, context)
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
            return self._exhausted(f"connection failed ({_one_line(reason)[:200]})", attempts, context)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            last = f"HTTP {status}{_error_detail(exc)}"
            retry_after = exc.response.headers.get("retry-after")
            if retry_after:
                last += f" (Retry-After: {_one_line(retry_after)[:40]})"
            if status in RETRYABLE_STATUS or status >= 500:
                return self._exhausted(last, attempts, context, retry_after_seconds(exc.response.headers))
            return self._permanent(last, context)
        return self._permanent(f"{type(exc).__name__}: {_one_line(str(exc))[:300]}", context)

    def _on(self, context: str) -> str:
        return f" on {context}" if context else ""

    def _permanent(self, last: str, context: str) -> InputError:
        return InputError(self._scrub(
            f"{self.what}: {self.url} failed{self._on(context)}: {last}; check that {self.base_url} is an "
            f"OpenAI-compatible server that serves model {self.model!r}{self.serves}, and that the API key "
            "is right"))

    def _exhausted(self, last: str, attempts: int, context: str, retry_after: float | None = None) -> TransientError:
        return TransientError(self._scrub(
            f"{self.what}: {self.url} failed{self._on(context)} after {max(attempts, 1)} attempt(s), last "
            f"error: {last}; check that the server at {self.base_url} is running and serves model "
            f"{self.model!r}"), self._scrub(last), retry_after)

    def _scrub(self, message: str) -> str:
        """The message with the API key cut out wherever it stands alone (a server may echo it)."""
        if not self._api_key:
            return message
        return re.sub(rf"(?<![\w-]){re.escape(self._api_key)}(?![\w-])", "[API key]", message)


def _reported_tokens(raw) -> tuple[int, int]:
    """``usage.prompt_tokens`` and ``usage.completion_tokens`` of a raw SDK response (0 when missing)."""
    try:
        usage = getattr(raw.parse(), "usage", None)
    except ValueError:  # not JSON: _message_text has already refused such an answer
        return 0, 0

    def count(name: str) -> int:
        value = getattr(usage, name, None) if usage is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    return count("prompt_tokens"), count("completion_tokens")


def _message_text(raw) -> str:
    """``choices[0].message.content`` of a raw SDK response, or :class:`_BadAnswer` saying why not."""
    try:
        completion = raw.parse()
    except ValueError:  # the body claims JSON but is not
        completion = None
    if completion is None or isinstance(completion, str):
        excerpt = _one_line(raw.http_response.text[:120])
        raise _BadAnswer(f"the response is not valid JSON (starts with {excerpt!r}); the endpoint must speak "
                         "the OpenAI chat-completions API")
    choices = getattr(completion, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    if message is None or not hasattr(message, "content"):
        raise _BadAnswer("the response has no choices[0].message.content; the endpoint must speak the OpenAI "
                         "chat-completions API")
    content = message.content
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _BadAnswer(f"choices[0].message.content is {type(content).__name__}, not text "
                         "(the model produced no text)")
    return content


def _error_detail(exc) -> str:
    """The server's error message, shortened to one line, as ``": message"``."""
    body = exc.body
    if isinstance(body, dict):
        text = body.get("message", body)
    elif body is not None:
        text = body
    else:
        try:
            text = exc.response.text
        except Exception:  # a streamed body that cannot be read any more
            text = ""
    text = _one_line(str(text))[:300]
    return f": {text}" if text else ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
