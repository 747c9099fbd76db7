"""A real OpenAI-compatible chat-completions server for tests, built on the standard library.

    from tests.chat_server import ChatServer, Fault

    with ChatServer(faults=[Fault(status=429, retry_after="1")]) as srv:
        client_endpoint = srv.base_url          # "http://127.0.0.1:PORT/v1"
        ...
        srv.requests[0].images                  # decoded frames of the first request
        srv.max_in_flight                       # most requests it ever handled at once
        srv.requests[0].usage                   # the token counts it reported for the first request

It serves ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1 (a free port) from a
background thread. Every request is validated (``model``, ``messages``, content parts) and every
``image_url`` data URL is decoded with PIL and must be a real JPEG; a bad request gets a 400 in the
OpenAI error schema. The reply text comes from ``handler(request)``; the default one describes what
arrived (frame count, time span, mean colour, subtitles) so a test can check it end to end.

Faults are planned per arriving request: ``faults`` is a list (the i-th request gets ``faults[i]``,
later ones none) or a function ``index -> Fault | None``. A :class:`Fault` can answer with an HTTP
status (with its own error message and a ``Retry-After``), delay the answer, or send raw bytes with
status 200 and any ``Content-Type`` (malformed JSON, an HTML page). Every delay is capped by
``handler_cap`` seconds and cut short when the server shuts down.

Every answer carries a ``usage`` object, as OpenAI's does: ``prompt_tokens`` is the number of
whitespace-separated words in the text parts of the user messages plus 64 per image, and
``completion_tokens`` the words of the reply; each request keeps what it was told in
``request.usage``. ``ChatServer(usage=False)`` leaves ``usage`` out of the answers (some servers do).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

import numpy as np
from PIL import Image

_TIME_PART = re.compile(r"^\s*(-?\d+(?:\.\d+)?)s\.(?:\s*Subtitle:\s*(.*?)\.?\s*)?$", re.S)


@dataclass
class Fault:
    """What to do to one request instead of (or before) answering it normally."""

    status: int | None = None          # answer with this HTTP status and an OpenAI-style error body
    retry_after: str | None = None     # ``Retry-After`` header sent with ``status``
    message: str | None = None         # the error message sent with ``status`` ("injected fault N" if None)
    delay: float = 0.0                 # seconds to wait before answering (capped by ``handler_cap``)
    body: bytes | None = None          # send these bytes with status 200 (e.g. truncated JSON)
    content_type: str = "application/json"  # the ``Content-Type`` sent with ``body``


class Headers(dict):
    """Request headers, looked up without regard to case as HTTP defines them (stored lower-cased)."""

    def __init__(self, items=()):
        super().__init__((str(k).lower(), v) for k, v in items)

    def __getitem__(self, key):
        return super().__getitem__(str(key).lower())

    def __contains__(self, key):
        return super().__contains__(str(key).lower())

    def get(self, key, default=None):
        return super().get(str(key).lower(), default)


@dataclass
class ChatRequest:
    """One request as the server received it."""

    index: int                         # arrival order, from 0
    path: str
    headers: Headers                   # case-insensitive: headers["Authorization"]
    payload: dict | None               # the parsed JSON body (None if it was not JSON)
    texts: list[str] = field(default_factory=list)          # text parts of the user messages, in order
    images: list[np.ndarray] = field(default_factory=list)  # decoded image parts (H, W, 3) uint8, in order
    parts: list[tuple[str, object]] = field(default_factory=list)  # ("text", str) / ("image", array) in order
    status: int | None = None          # what the server answered (None if the client left first)
    started: float = 0.0              # time.monotonic() at arrival
    finished: float = 0.0
    client_port: int = 0               # the client's TCP port (the same for requests on one connection)
    usage: dict | None = None          # the usage object sent with a 200 answer (None if none was sent)

    @property
    def model(self) -> str | None:
        return (self.payload or {}).get("model")

    @property
    def messages(self) -> list[dict]:
        return (self.payload or {}).get("messages", [])

    @property
    def system(self) -> str | None:
        """The text of the first system message, if any."""
        for message in self.messages:
            if message.get("role") == "system":
                content = message.get("content")
                return content if isinstance(content, str) else " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict))
        return None


class BadRequest(Exception):
    """The request breaks the chat-completions schema; answered with ``status`` (400 unless said)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def describe(request: ChatRequest) -> str:
    """The default reply: a caption computed from what arrived.

    ``<caption>{n} frames from {t0}s to {t1}s; mean colour {r},{g},{b}; subtitles: {a | b}</caption>``
    where the times and subtitles come from the ``"{t}s."`` / ``"{t}s. Subtitle: …."`` text parts.
    """
    times, subtitles = [], []
    for text in request.texts:
        match = _TIME_PART.match(text)
        if match:
            times.append(match.group(1))
            if match.group(2) and match.group(2) not in subtitles:
                subtitles.append(match.group(2))
    if request.images:
        mean = np.mean([img.reshape(-1, 3).mean(axis=0) for img in request.images], axis=0)
        colour = ",".join(str(int(round(c))) for c in mean)
    else:
        colour = "none"
    span = f"from {times[0]}s to {times[-1]}s" if times else "with no times"
    return (f"<caption>{len(request.images)} frames {span}; mean colour {colour}; "
            f"subtitles: {' | '.join(subtitles) if subtitles else 'none'}</caption>")


def decode_data_url(url: str) -> np.ndarray:
    """The RGB pixels of a ``data:image/jpeg;base64,…`` URL; :class:`BadRequest` unless it is a real JPEG."""
    if not isinstance(url, str) or not url.startswith("data:image/"):
        raise BadRequest(f"image_url must be a data:image/...;base64 URL, got {str(url)[:40]!r}")
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise BadRequest(f"image_url data URL is not base64: {header!r}")
    try:
        raw = base64.b64decode(data, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, OSError) as exc:
        raise BadRequest(f"image_url does not decode as an image ({exc})") from None
    if image.format != "JPEG":
        raise BadRequest(f"image_url holds a {image.format} image, expected JPEG")
    return np.asarray(image.convert("RGB"))


class ChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1, for use as a context manager."""

    def __init__(self, handler: Callable[[ChatRequest], str] | None = None, *,
                 faults: Sequence[Fault | None] | Callable[[int], Fault | None] = (),
                 delay: float = 0.0, models: Sequence[str] | None = None, api_key: str | None = None,
                 handler_cap: float = 20.0, usage: bool = True):
        """``models``: the only model names accepted (any if None); ``api_key``: require this Bearer
        key (none required if None); ``delay``: seconds added before every answer; ``usage``: send a
        ``usage`` object with each answer."""
        self.handler = handler or describe
        self.usage = usage
        self.faults = faults
        self.delay = delay
        self.models = list(models) if models is not None else None
        self.api_key = api_key
        self.handler_cap = handler_cap
        self.requests: list[ChatRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        assert self._httpd is not None, "the server is not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "ChatServer":
        owner = self

        class Handler(_Handler):
            server_owner = owner
            timeout = owner.handler_cap  # a stalled client cannot hold a handler thread forever

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="chat-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wakes delayed handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ bookkeeping used by the handler

    def _arrive(self, request: ChatRequest) -> Fault | None:
        with self._lock:
            request.index = len(self.requests)
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if callable(self.faults):
            return self.faults(request.index)
        return self.faults[request.index] if request.index < len(self.faults) else None

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _sleep(self, seconds: float) -> bool:
        """Wait up to ``handler_cap``; False if the server is shutting down."""
        if seconds <= 0:
            return not self._stop.is_set()
        return not self._stop.wait(min(seconds, self.handler_cap))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: ChatServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path.rstrip("/") != "/v1/models":
            return self._send_error(404, f"no route GET {self.path}", "not_found_error")
        owner = self.server_owner
        names = owner.models if owner.models is not None else ["test-model"]
        self._send_json(200, {"object": "list", "data": [
            {"id": name, "object": "model", "created": int(time.time()), "owned_by": "chat-server"}
            for name in names]})

    def do_POST(self):
        owner = self.server_owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send_error(404, f"no route POST {self.path}", "not_found_error")
        request = ChatRequest(index=-1, path=self.path, headers=Headers(self.headers.items()), payload=None,
                              started=time.monotonic(), client_port=self.client_address[1])
        fault = owner._arrive(request)
        self._counted = True
        try:
            request.status = self._answer(request, raw, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its timeout); nothing to answer
        finally:
            request.finished = time.monotonic()
            self._stop_counting()

    def _stop_counting(self) -> None:
        # A request stops being "in flight" before its response is written: once the client has the
        # response it may send its next request, which must not overlap this one in the count.
        if getattr(self, "_counted", False):
            self._counted = False
            self.server_owner._leave()

    # ------------------------------------------------------------------ one chat request

    def _answer(self, request: ChatRequest, raw: bytes, fault: Fault | None) -> int | None:
        owner = self.server_owner
        try:  # kept even when a fault answers, so a test can see what every attempt sent
            request.payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            request.payload = None
        if not owner._sleep(owner.delay + (fault.delay if fault else 0.0)):
            return None
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            return self._send_error(401, "Incorrect API key provided", "authentication_error")
        if fault and fault.status is not None:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            message = fault.message if fault.message is not None else f"injected fault {fault.status}"
            return self._send_error(fault.status, message, "server_error", extra)
        if fault and fault.body is not None:
            return self._send_bytes(200, fault.body, content_type=fault.content_type)
        if request.payload is None and raw.strip() != b"null":
            return self._send_error(400, "the request body is not valid JSON", "invalid_request_error")
        try:
            _validate(request, owner.models)
        except BadRequest as exc:
            return self._send_error(exc.status, str(exc), "invalid_request_error")
        content = owner.handler(request)
        prompt_tokens = sum(len(t.split()) for t in request.texts) + 64 * len(request.images)
        completion_tokens = len(content.split())
        answer = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        }
        if owner.usage:
            request.usage = answer["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                               "total_tokens": prompt_tokens + completion_tokens}
        return self._send_json(200, answer)

    def _send_error(self, status: int, message: str, kind: str, headers: dict | None = None) -> int:
        return self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _send_json(self, status: int, data: dict, headers: dict | None = None) -> int:
        return self._send_bytes(status, json.dumps(data).encode(), headers)

    def _send_bytes(self, status: int, body: bytes, headers: dict | None = None,
                    content_type: str = "application/json") -> int:
        self._stop_counting()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        return status


def _validate(request: ChatRequest, models: list[str] | None) -> None:
    """Check the chat-completions schema and fill ``request.texts/images/parts``; raise :class:`BadRequest`."""
    payload = request.payload
    if not isinstance(payload, dict):
        raise BadRequest("the request body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' must be a non-empty string")
    if models is not None and model not in models:
        raise BadRequest(f"The model `{model}` does not exist.", status=404)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"messages[{i}] must be an object with a role of system, user, assistant or tool")
        content = message.get("content")
        if isinstance(content, str):
            if message["role"] == "user":
                request.texts.append(content)
                request.parts.append(("text", content))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if message["role"] == "user":
                    request.texts.append(part["text"])
                    request.parts.append(("text", part["text"]))
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                pixels = decode_data_url(part["image_url"].get("url"))
                request.images.append(pixels)
                request.parts.append(("image", pixels))
            else:
                raise BadRequest(f"messages[{i}].content[{j}] must be a text or image_url part")
    for key in ("max_tokens", "temperature"):
        if key in payload and not isinstance(payload[key], (int, float)):
            raise BadRequest(f"'{key}' must be a number")
