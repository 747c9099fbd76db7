"""Caption segments with any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).

Each :class:`CaptionRequest` becomes one ``POST {base}/chat/completions``: a system message asking for a
factual caption within the level's word budget, then one user message that alternates, frame by frame,
a text part (``"12.5s."`` or ``"12.5s. Subtitle: line one,line two."``) and the frame as a base64 JPEG
``image_url``. The reply's ``<caption>…</caption>`` wrapper is removed.

Requests run on a small thread pool with a sliding window: at most ``concurrency`` requests are in
flight, and the request iterator is pulled only as slots free up, so at most about ``concurrency``
segments' frames are held in memory. Only the standard library speaks HTTP here.
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
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from longvideo_r1.corpus.captioners import CaptionRequest
from longvideo_r1.corpus.captioning import strip_caption_tags
from longvideo_r1.errors import InputError

_OVERVIEW_PROMPT = (
    "You write captions for one segment of a longer video. The user shows you {num_frames} frames "
    "sampled evenly from the segment, in time order; before each frame comes its timestamp in seconds "
    "and, when a subtitle is on screen at that moment, the subtitle text.\n"
    "Write a detailed, factual caption of at most {word_budget} words that gives an overview of what "
    "happens, event by event in the order it happens: the setting, the people and objects that matter, "
    "their actions, and how the scene changes. Quote any text that appears on screen and report what is "
    "said in the dialogue or subtitles. Describe only what the frames and subtitles show; do not guess "
    "or add commentary.\n"
    "Put the whole caption between <caption> and </caption>."
)
_DETAIL_PROMPT = (
    "You write captions for one short segment of a longer video. The user shows you {num_frames} frames "
    "sampled evenly from the segment, in time order; before each frame comes its timestamp in seconds "
    "and, when a subtitle is on screen at that moment, the subtitle text.\n"
    "Write a detailed, factual caption of at most {word_budget} words that records the fine details: "
    "what each person looks like and wears, the objects present with their colours, counts and "
    "positions, gestures and small actions, and exactly which text, numbers or signs are visible. "
    "Report what is said in the dialogue or subtitles word for word where you can. Describe only what "
    "the frames and subtitles show; do not guess or add commentary.\n"
    "Put the whole caption between <caption> and </caption>."
)

# Statuses worth another try: the server is busy, restarting or timed out on its side.
_RETRYABLE_STATUS = {408, 429}
_MAX_BACKOFF_S = 60.0
_MAX_RETRY_AFTER_S = 300.0
_END = object()


def chat_base_url(endpoint: str) -> str:
    """``http://host:port/v1`` from a base URL given with or without ``/v1`` (or the full route)."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"captioner endpoint {endpoint!r}: give an http(s) base URL such as "
                         "http://127.0.0.1:8000/v1")
    if url.endswith("/chat/completions"):
        url = url[: -len("/chat/completions")]
    if not url.endswith("/v1"):
        url += "/v1"
    return url


def encode_jpeg(frame: np.ndarray, quality: int) -> str:
    """A ``data:image/jpeg;base64,…`` URL of one RGB frame."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def frame_text(t: float, subtitles: list[str]) -> str:
    """The text part that precedes a frame: its time, and the subtitle lines shown at that time."""
    if subtitles:
        return f"{t}s. Subtitle: {','.join(subtitles)}."
    return f"{t}s."


class _Failure(Exception):
    """One failed HTTP attempt; ``retryable`` says whether another try could help."""

    def __init__(self, message: str, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class OpenAICaptioner:
    """Captions from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``retries`` counts the tries after the first one, so a request is sent at most ``1 + retries``
    times. ``system_prompt`` replaces the built-in prompt; the placeholders ``{word_budget}``,
    ``{num_frames}`` and ``{level}`` in it are filled in (other braces are left alone).
    """

    name = "openai"

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 4, backoff: float = 1.0, max_tokens: int = 1024,
                 temperature: float = 0.0, jpeg_quality: int = 90, system_prompt: str | None = None):
        if not model:
            raise InputError("openai captioner: no model given; pass the model name the server serves")
        if concurrency < 1:
            raise InputError(f"openai captioner: concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise InputError(f"openai captioner: timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0:
            raise InputError(f"openai captioner: retries ({retries}) and backoff ({backoff}) must not be negative")
        if not 1 <= jpeg_quality <= 100:
            raise InputError(f"openai captioner: jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.base_url = chat_base_url(endpoint)
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.system_prompt = system_prompt

    def __repr__(self) -> str:  # never show the API key
        return f"OpenAICaptioner(endpoint={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ the stream

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        """Yield one caption per request, in input order, with at most ``concurrency`` in flight."""
        # Set when the stream ends early (an error, or the consumer stops) so workers stop retrying.
        abort = threading.Event()
        pending: deque[Future] = deque()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-captioner")
        try:
            iterator = iter(requests)
            while True:
                # Free a slot before pulling the next request, so its frames are decoded only then.
                while len(pending) >= self.concurrency:
                    yield pending.popleft().result()
                request = next(iterator, _END)
                if request is _END:
                    break
                pending.append(pool.submit(self.caption_one, request, abort))
            while pending:
                yield pending.popleft().result()
        finally:
            abort.set()
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ one request

    def build_messages(self, request: CaptionRequest) -> list[dict]:
        """The chat messages for one segment (system prompt, then frames with their times)."""
        n = len(request.frames)
        if len(request.frame_time) != n:
            raise InputError(f"video {request.video_id} segment {request.ids}: {n} frames but "
                             f"{len(request.frame_time)} frame times; the caption request is inconsistent")
        template = self.system_prompt
        if template is None:
            template = _OVERVIEW_PROMPT if request.level in ("high", "medium") else _DETAIL_PROMPT
        system = (template.replace("{word_budget}", str(request.word_budget))
                  .replace("{num_frames}", str(n)).replace("{level}", request.level))
        subtitles = request.subtitles or [[] for _ in range(n)]
        content = []
        for frame, t, subs in zip(request.frames, request.frame_time, subtitles):
            content.append({"type": "text", "text": frame_text(t, subs)})
            content.append({"type": "image_url", "image_url": {"url": encode_jpeg(frame, self.jpeg_quality)}})
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def caption_one(self, request: CaptionRequest, abort: threading.Event | None = None) -> str:
        """Caption one segment, retrying transient failures; raise :class:`InputError` when it cannot.

        Setting ``abort`` stops the retries (the attempt in flight still runs to its timeout).
        """
        abort = abort or threading.Event()
        body = json.dumps({"model": self.model, "messages": self.build_messages(request),
                           "max_tokens": self.max_tokens, "temperature": self.temperature}).encode()
        what = f"video {request.video_id} {request.level} segment {request.ids}"
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            try:
                return strip_caption_tags(self._post(body))
            except _Failure as failure:
                last = str(failure)
                if not failure.retryable:
                    raise InputError(f"openai captioner: {self.url} failed on {what}: {last}; check that "
                                     f"{self.base_url} is an OpenAI-compatible server that serves model "
                                     f"{self.model!r} with image input, and that the API key is right") from None
                if attempt < self.retries:
                    wait = self.backoff * 2 ** attempt * (0.5 + random.random())
                    wait = min(wait, _MAX_BACKOFF_S)
                    if failure.retry_after is not None:
                        wait = max(wait, failure.retry_after)
                    if abort.wait(wait):
                        break
        raise InputError(f"openai captioner: {self.url} failed on {what} after {attempt + 1} attempt(s), "
                         f"last error: {last}; check that the server at {self.base_url} is running and "
                         f"serves model {self.model!r}")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            retryable = exc.code in _RETRYABLE_STATUS or exc.code >= 500
            raise _Failure(f"HTTP {exc.code}{detail}", retryable, _retry_after(exc.headers)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise _Failure(f"no answer within {self.timeout:g} s (timed out)", True) from None
            raise _Failure(f"connection failed ({reason})", True) from None
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
                       "(the model produced no caption)", False)
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
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)
