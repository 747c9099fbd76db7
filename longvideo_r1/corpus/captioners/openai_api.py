"""Caption segments with any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).

Each :class:`CaptionRequest` becomes one ``POST {base}/chat/completions``: a system message asking for a
factual caption within the level's word budget (per level: the frame times, what happens, the people,
the objects and the on-screen text; at the low level also the setting), then one user message that
alternates, frame by frame, a text part (``"12.5s."`` or ``"12.5s. Subtitle: line one,line two."``)
and the frame as a base64 JPEG ``image_url``. The reply's ``<caption>…</caption>`` wrapper is removed.

Requests run concurrently in a pool of ``concurrency`` threads with a sliding window: at most
``concurrency`` requests of the stream are in flight, and the request iterator is pulled (and its
frames encoded, in the caller's thread) only as slots free up, so at most about ``concurrency``
segments' frames are held in memory. Each request takes a slot at one of the endpoints first (a
limit per endpoint, shared by the whole build: :mod:`longvideo_r1.corpus.endpoints`), and a failure
worth retrying is retried with exponential backoff, at another endpoint when one has room. When the
stream ends early (an error, or the consumer stops) no request waiting for a slot or a retry is sent
again. HTTP and error messages are :class:`longvideo_r1.openai_client.ChatClient`'s.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Iterable, Iterator, Sequence

from longvideo_r1.corpus.captioners import CaptionRequest
from longvideo_r1.corpus.captioning import strip_caption_tags
from longvideo_r1.corpus.endpoints import EndpointSlots, endpoint_list
from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient, TransientError, chat_base_url, encode_jpeg

__all__ = ["OpenAICaptioner", "chat_base_url", "encode_jpeg", "frame_text"]

# The built-in instructions, per level (PROTOCOL §1: 400 words for high and medium, 200 for low).
# Every level asks for the times of the sampled frames, what happens, the people, the objects and the
# on-screen text; the low level, the one a navigator reads closely, also asks for the setting.
_FRAMES_GIVEN = (
    "You caption segments of long videos. The user sends {num_frames} frames taken at even intervals "
    "across one {level}-level segment of a longer video, earliest first. Before each frame comes the "
    "second of the video at which it was taken and, if a subtitle was on screen at that moment, the subtitle's text.\n"
)
_KEEP_TO_THE_FRAMES = (
    "Report only what the frames and subtitles show: no guessing, no opinions, no mention of these "
    "instructions.\n"
    "Put the whole caption between <caption> and </caption>."
)
_OVERVIEW_PROMPT = (
    _FRAMES_GIVEN
    + "Write an overview caption of this segment, at most {word_budget} words, in the order things "
    "happen. Cover:\n"
    "- when: anchor each event to the frame times in seconds (e.g. 'from 12.0s to 31.5s');\n"
    "- what happens: the main events and actions, and each change of scene;\n"
    "- the people: who is there, what they look like and what they do;\n"
    "- the objects that take part in the events;\n"
    "- on-screen text: quote it exactly, and say what the subtitles say.\n"
    + _KEEP_TO_THE_FRAMES
)
_DETAIL_PROMPT = (
    _FRAMES_GIVEN
    + "Write a detailed caption of this short segment, at most {word_budget} words, that a reader can "
    "search for small facts. Cover:\n"
    "- when: anchor each observation to the frame times in seconds (e.g. 'at 4.5s');\n"
    "- the setting: the place, indoors or outdoors, the lighting, and the weather when outdoors;\n"
    "- what happens, action by action, small gestures included;\n"
    "- the people: appearance, clothing, position and what each one does;\n"
    "- the objects: what they are, how many, their colours and where they are;\n"
    "- on-screen text and numbers: quote every one exactly, and give the subtitles' words.\n"
    + _KEEP_TO_THE_FRAMES
)

_END = object()
MAX_BACKOFF = 8.0
"""longest wait between two tries of a request, seconds (as the openai SDK's)"""
MAX_RETRY_AFTER = 120.0
"""longest ``Retry-After`` honoured, seconds"""


def frame_text(t: float, subtitles: list[str]) -> str:
    """The text part that precedes a frame: its time, and the subtitle lines shown at that time."""
    if subtitles:
        return f"{t}s. Subtitle: {','.join(subtitles)}."
    return f"{t}s."


class OpenAICaptioner:
    """Captions from one or more OpenAI-compatible ``/chat/completions`` endpoints.

    ``endpoint``: one base URL, or a list of them serving the same model. ``concurrency``: requests in
    flight for the stream being captioned (one video). Each request first takes a slot at an endpoint
    from ``slots`` (:class:`~longvideo_r1.corpus.endpoints.EndpointSlots`, shared by every video of a
    build, or a Ray task's :class:`~longvideo_r1.corpus.endpoints.RaySlots`); without one the
    captioner keeps its own, ``concurrency_per_endpoint`` (default ``concurrency``) per endpoint.

    ``retries`` counts the tries after the first one, over all endpoints, so a request is sent at most
    ``1 + retries`` times. A failure worth retrying (a connection error, ``timeout`` seconds without
    an answer, HTTP 408, 409, 429 or 5xx) is tried again after ``backoff`` · 2ⁿ seconds (at most 8 s,
    each cut by up to 25 % at random) or the ``Retry-After`` the server asked for (at most 120 s), at
    another endpoint when one has a free slot; other failures end the request at once.
    ``system_prompt`` replaces the built-in prompts; the placeholders ``{word_budget}``,
    ``{num_frames}`` and ``{level}`` in it are filled in (other braces are left alone).
    """

    name = "openai"

    def __init__(self, endpoint: str | Sequence[str], model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 4, max_tokens: int = 1024,
                 temperature: float = 0.0, jpeg_quality: int = 90, system_prompt: str | None = None,
                 concurrency_per_endpoint: int | None = None, backoff: float = 0.5, slots=None):
        if concurrency < 1:
            raise InputError(f"openai captioner: concurrency must be at least 1, got {concurrency}")
        if not 1 <= jpeg_quality <= 100:
            raise InputError(f"openai captioner: jpeg_quality must be in 1..100, got {jpeg_quality}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InputError(f"openai captioner: retries must be a whole number, 0 or more, got {retries!r}")
        if not backoff or backoff <= 0:
            raise InputError(f"openai captioner: backoff must be positive seconds, got {backoff!r}")
        # The clients check the model and timeout and own the HTTP; the retries are ours (over endpoints).
        self.clients = [ChatClient(url, model, api_key=api_key, timeout=timeout, retries=0,
                                   what="openai captioner", serves=" with image input")
                        for url in endpoint_list(endpoint)]
        self.slots = slots if slots is not None else EndpointSlots(
            [c.base_url for c in self.clients], concurrency_per_endpoint or concurrency)
        self.concurrency = concurrency
        self.retries = retries
        self.backoff = float(backoff)
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.system_prompt = system_prompt

    @property
    def endpoints(self) -> list[str]:
        return [c.base_url for c in self.clients]

    @property
    def base_url(self) -> str:
        return self.clients[0].base_url

    @property
    def url(self) -> str:
        return self.clients[0].url

    @property
    def model(self) -> str:
        return self.clients[0].model

    @property
    def timeout(self) -> float:
        return self.clients[0].timeout

    def close(self) -> None:
        """Close the endpoints' connections (a later request opens new ones)."""
        for client in self.clients:
            client.close()

    def __repr__(self) -> str:  # never show the API key
        shown = self.base_url if len(self.clients) == 1 else self.endpoints
        return f"OpenAICaptioner(endpoint={shown!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ the stream

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        """Yield one caption per request, in input order, with at most ``concurrency`` in flight."""
        stop = threading.Event()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai-captioner")
        pending: deque[Future] = deque()
        try:
            iterator = iter(requests)
            while True:
                # Free a slot before pulling the next request, so its frames are decoded only then.
                while len(pending) >= self.concurrency:
                    yield pending.popleft().result()
                request = next(iterator, _END)
                if request is _END:
                    break
                pending.append(pool.submit(self._caption, self.build_messages(request), _context(request), stop))
            while pending:
                yield pending.popleft().result()
        finally:
            stop.set()      # requests waiting for a slot or a retry give up now; none is sent again
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False)

    def _caption(self, messages: list[dict], context: str, stop: threading.Event) -> str:
        """One request, retried over the endpoints (see the class doc); runs in a thread of the stream."""
        attempts, avoid, tried, last = 0, None, [], ""
        while True:
            slot = None
            while slot is None:
                if stop.is_set():
                    raise CancelledError(context)
                slot = self.slots.acquire(avoid)
            client = self.clients[slot]
            attempts += 1
            try:
                text, seconds = client.complete_timed(messages, max_tokens=self.max_tokens,
                                                      temperature=self.temperature, context=context)
            except TransientError as exc:
                again = attempts <= self.retries and not stop.is_set()
                self.slots.release(slot, None, retry=again)
                tried.append(client.base_url)
                last = f"{exc.last} at {client.base_url}" if len(self.clients) > 1 else exc.last
                if not again:
                    raise self._gave_up(context, attempts, tried, last) from None
                wait = exc.retry_after if exc.retry_after is not None else \
                    min(self.backoff * 2 ** (attempts - 1), MAX_BACKOFF) * random.uniform(0.75, 1.0)
                if stop.wait(min(wait, MAX_RETRY_AFTER)):
                    raise CancelledError(context) from None
                avoid = slot
                continue
            except BaseException:
                self.slots.release(slot, None)
                raise
            self.slots.release(slot, seconds)
            return strip_caption_tags(text)

    def _gave_up(self, context: str, attempts: int, tried: list[str], last: str) -> InputError:
        model = self.model
        if len(self.clients) == 1:
            return InputError(f"openai captioner: {self.url} failed on {context} after {attempts} attempt(s), last "
                              f"error: {last}; check that the server at {self.base_url} is running and serves "
                              f"model {model!r}")
        where = ", ".join(dict.fromkeys(tried))
        return InputError(f"openai captioner: {context} failed after {attempts} attempt(s) at {where}, last error: "
                          f"{last}; check that those servers are running and serve model {model!r}")

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

    def caption_one(self, request: CaptionRequest) -> str:
        """Caption one segment, retrying transient failures; raise :class:`InputError` when it cannot."""
        return self._caption(self.build_messages(request), _context(request), threading.Event())


def _context(request: CaptionRequest) -> str:
    """What a request is for, in error messages."""
    return f"video {request.video_id} {request.level} segment {request.ids}"
