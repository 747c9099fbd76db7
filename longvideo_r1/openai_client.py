"""A small client for OpenAI-compatible ``/chat/completions`` endpoints (vLLM, SGLang, OpenAI itself).

Shared by the captioner (``corpus.captioners.openai_api``), the video_qa tool (``agent.video_qa``)
and the LLM navigator. Only the standard library speaks HTTP here.

:meth:`ChatClient.complete` sends one request and returns ``choices[0].message.content``. Transient
failures (connection errors, timeouts, HTTP 408/429/5xx) are retried with exponential backoff and
jitter, waiting at least as long as a ``Retry-After`` header asks; permanent ones (other 4xx, a body
that is not a chat completion) fail at once. Every failure that ends the call is an
:class:`~longvideo_r1.errors.InputError` on one line naming the URL, what the request was for, the
last error and what to check; the API key never appears in a message or a ``repr``.

:meth:`ChatClient.complete_timed` also returns the wall seconds of the attempt that succeeded, and
nothing else: failed attempts and backoff waits are left out, as the paper's cost accounting counts
the model's compute time per call (PROTOCOL §2). That time still includes the network round trip and
any queueing on the server; on a local server those are small.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Sequence

import numpy as np

from longvideo_r1.errors import InputError

# Statuses worth another try besides 5xx: the server timed out on its side or asks us to slow down.
RETRYABLE_STATUS = frozenset({408, 429})
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0


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


class _Failure(Exception):
    """One failed HTTP attempt; ``retryable`` says whether another try could help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class ChatClient:
    """One OpenAI-compatible chat endpoint and model, with retries. Safe to share between threads.

    ``retries`` counts the tries after the first, so a request is sent at most ``1 + retries`` times.
    ``what`` names the caller in error messages (``"openai captioner"``, ``"video_qa"``);
    ``serves`` is appended to the model in the advice, e.g. ``" with image input"``.
    ``api_key`` falls back to ``$OPENAI_API_KEY``; none is sent when neither is set.
    """

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 4, backoff: float = 1.0, what: str = "openai endpoint", serves: str = ""):
        if not model:
            raise InputError(f"{what}: no model given; pass the model name the server serves")
        if not timeout or timeout <= 0:
            raise InputError(f"{what}: timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0:
            raise InputError(f"{what}: retries ({retries}) and backoff ({backoff}) must not be negative")
        self.what = what
        self.serves = serves
        self.base_url = chat_base_url(endpoint, what)
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)

    def __repr__(self) -> str:  # never show the API key
        return f"ChatClient(endpoint={self.base_url!r}, model={self.model!r})"

    # ------------------------------------------------------------------ requests

    def body(self, messages: Sequence[dict], *, max_tokens: int | None = None, temperature: float | None = None,
             stop: Sequence[str] | None = None, extra: dict[str, Any] | None = None) -> dict:
        """The JSON body of one request; options left as None are not sent (the server's defaults apply)."""
        body: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        if max_tokens is not None:
            body["max_tokens"] = int(max_tokens)
        if temperature is not None:
            body["temperature"] = float(temperature)
        if stop:
            body["stop"] = list(stop)
        if extra:
            body.update(extra)
        return body

    def complete(self, messages: Sequence[dict], *, max_tokens: int | None = None,
                 temperature: float | None = None, stop: Sequence[str] | None = None,
                 extra: dict[str, Any] | None = None, context: str = "",
                 abort: threading.Event | None = None) -> str:
        """``choices[0].message.content`` of one chat completion; :class:`InputError` when it cannot be had.

        ``context`` says what the request is for in error messages (``"video X segment (1, 2, 3)"``).
        Setting ``abort`` stops further retries (the attempt in flight still runs to its timeout).
        """
        return self.complete_timed(messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                                   extra=extra, context=context, abort=abort)[0]

    def complete_timed(self, messages: Sequence[dict], *, max_tokens: int | None = None,
                       temperature: float | None = None, stop: Sequence[str] | None = None,
                       extra: dict[str, Any] | None = None, context: str = "",
                       abort: threading.Event | None = None) -> tuple[str, float]:
        """Like :meth:`complete`, plus the wall seconds of the successful attempt alone."""
        raw = json.dumps(self.body(messages, max_tokens=max_tokens, temperature=temperature, stop=stop,
                                   extra=extra)).encode()
        return self._send(raw, context, abort)

    def _send(self, raw_body: bytes, context: str, abort: threading.Event | None) -> tuple[str, float]:
        abort = abort or threading.Event()
        on = f" on {context}" if context else ""
        last = "no attempt made"
        attempt = 0
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                content = self._post(raw_body)
                return content, time.perf_counter() - started
            except _Failure as failure:
                last = str(failure)
                if not failure.retryable:
                    raise InputError(f"{self.what}: {self.url} failed{on}: {last}; check that {self.base_url} "
                                     f"is an OpenAI-compatible server that serves model {self.model!r}"
                                     f"{self.serves}, and that the API key is right") from None
                if attempt < self.retries:
                    if abort.wait(self._wait(attempt, failure.retry_after)):
                        break
        raise InputError(f"{self.what}: {self.url} failed{on} after {attempt + 1} attempt(s), last error: "
                         f"{last}; check that the server at {self.base_url} is running and serves model "
                         f"{self.model!r}")

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        wait = min(self.backoff * 2 ** attempt * (0.5 + random.random()), MAX_BACKOFF_S)
        return max(wait, retry_after) if retry_after is not None else wait

    def _post(self, raw_body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=raw_body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            retryable = exc.code in RETRYABLE_STATUS or exc.code >= 500
            raise _Failure(f"HTTP {exc.code}{_error_detail(exc)}", retryable, _retry_after(exc.headers)) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Failure(f"no answer within {self.timeout:g} s (timed out)", True) from None
            raise _Failure(f"connection failed ({exc.reason})", True) from None
        except TimeoutError:
            raise _Failure(f"no answer within {self.timeout:g} s (timed out)", True) from None
        except (OSError, ValueError) as exc:  # resets, broken pipes, http.client protocol errors
            raise _Failure(f"connection failed ({type(exc).__name__}: {exc})", True) from None
        return _message_content(raw)


def _message_content(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions response, or a :class:`_Failure` saying why not."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        excerpt = raw[:120].decode("utf-8", "replace").replace("\n", " ")
        raise _Failure(f"the response is not valid JSON (starts with {excerpt!r}); the endpoint must speak "
                       "the OpenAI chat-completions API", False) from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Failure("the response has no choices[0].message.content; the endpoint must speak the "
                       "OpenAI chat-completions API", False) from None
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _Failure(f"choices[0].message.content is {type(content).__name__}, not text "
                       "(the model produced no text)", False)
    return content


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message, shortened to one line, as ``": message"``."""
    try:
        raw = exc.read(2000)
    except Exception:
        return ""
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
        err = data.get("error", data) if isinstance(data, dict) else data
        text = err.get("message", text) if isinstance(err, dict) else str(err)
    except (json.JSONDecodeError, AttributeError):
        pass
    text = " ".join(str(text).split())[:300]
    return f": {text}" if text else ""


def _retry_after(headers) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
