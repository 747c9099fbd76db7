"""Caption segments with any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).

Each :class:`CaptionRequest` becomes one ``POST {base}/chat/completions``: a system message asking for a
factual caption within the level's word budget, then one user message that alternates, frame by frame,
a text part (``"12.5s."`` or ``"12.5s. Subtitle: line one,line two."``) and the frame as a base64 JPEG
``image_url``. The reply's ``<caption>…</caption>`` wrapper is removed.

Requests run concurrently on the client's event loop (``openai.AsyncOpenAI`` through
:meth:`~longvideo_r1.openai_client.ChatClient.submit`) with a sliding window: at most ``concurrency``
requests are in flight, and the request iterator is pulled (and its frames encoded, in the caller's
thread) only as slots free up, so at most about ``concurrency`` segments' frames are held in memory.
When the stream ends early (an error, or the consumer stops) the requests still in flight are
cancelled at once, retry waits included. HTTP, retries and error messages are
:class:`longvideo_r1.openai_client.ChatClient`'s.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from typing import Iterable, Iterator

from longvideo_r1.corpus.captioners import CaptionRequest
from longvideo_r1.corpus.captioning import strip_caption_tags
from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient, chat_base_url, encode_jpeg

__all__ = ["OpenAICaptioner", "chat_base_url", "encode_jpeg", "frame_text"]

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

_END = object()


def frame_text(t: float, subtitles: list[str]) -> str:
    """The text part that precedes a frame: its time, and the subtitle lines shown at that time."""
    if subtitles:
        return f"{t}s. Subtitle: {','.join(subtitles)}."
    return f"{t}s."


class OpenAICaptioner:
    """Captions from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``retries`` counts the tries after the first one, so a request is sent at most ``1 + retries``
    times (the openai SDK's retries and waits: see :mod:`longvideo_r1.openai_client`). ``system_prompt`` replaces the built-in prompt; the placeholders ``{word_budget}``,
    ``{num_frames}`` and ``{level}`` in it are filled in (other braces are left alone).
    """

    name = "openai"

    def __init__(self, endpoint: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 120.0, retries: int = 4, max_tokens: int = 1024,
                 temperature: float = 0.0, jpeg_quality: int = 90, system_prompt: str | None = None):
        if concurrency < 1:
            raise InputError(f"openai captioner: concurrency must be at least 1, got {concurrency}")
        if not 1 <= jpeg_quality <= 100:
            raise InputError(f"openai captioner: jpeg_quality must be in 1..100, got {jpeg_quality}")
        # The client checks the model, timeout and retries, and owns the HTTP and retry logic.
        self.client = ChatClient(endpoint, model, api_key=api_key, timeout=timeout, retries=retries,
                                 what="openai captioner", serves=" with image input")
        self.concurrency = concurrency
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.system_prompt = system_prompt

    @property
    def base_url(self) -> str:
        return self.client.base_url

    @property
    def url(self) -> str:
        return self.client.url

    @property
    def model(self) -> str:
        return self.client.model

    @property
    def timeout(self) -> float:
        return self.client.timeout

    @property
    def retries(self) -> int:
        return self.client.retries

    def __repr__(self) -> str:  # never show the API key
        return f"OpenAICaptioner(endpoint={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    # ------------------------------------------------------------------ the stream

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        """Yield one caption per request, in input order, with at most ``concurrency`` in flight."""
        pending: deque[Future] = deque()
        try:
            iterator = iter(requests)
            while True:
                # Free a slot before pulling the next request, so its frames are decoded only then.
                while len(pending) >= self.concurrency:
                    yield strip_caption_tags(pending.popleft().result()[0])
                request = next(iterator, _END)
                if request is _END:
                    break
                pending.append(self.client.submit(self.build_messages(request), max_tokens=self.max_tokens,
                                                  temperature=self.temperature, context=_context(request)))
            while pending:
                yield strip_caption_tags(pending.popleft().result()[0])
        finally:
            for future in pending:  # stops their HTTP attempts and retry waits now
                future.cancel()

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
        reply = self.client.complete(self.build_messages(request), max_tokens=self.max_tokens,
                                     temperature=self.temperature, context=_context(request))
        return strip_caption_tags(reply)


def _context(request: CaptionRequest) -> str:
    """What a request is for, in error messages."""
    return f"video {request.video_id} {request.level} segment {request.ids}"
