"""Caption segments with any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).

Each :class:`CaptionRequest` becomes one ``POST {base}/chat/completions``: a system message asking for a
factual caption within the level's word budget (per level: the frame times, what happens, the people,
the objects and the on-screen text; at the low level also the setting), then one user message that
alternates, frame by frame, a text part (``"12.5s."`` or ``"12.5s. Subtitle: line one,line two."``)
and the frame as a base64 JPEG ``image_url``. The reply's ``<caption>…</caption>`` wrapper is removed.

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


def frame_text(t: float, subtitles: list[str]) -> str:
    """The text part that precedes a frame: its time, and the subtitle lines shown at that time."""
    if subtitles:
        return f"{t}s. Subtitle: {','.join(subtitles)}."
    return f"{t}s."


class OpenAICaptioner:
    """Captions from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``retries`` counts the tries after the first one, so a request is sent at most ``1 + retries``
    times (the openai SDK's retries and waits: see :mod:`longvideo_r1.openai_client`).
    ``system_prompt`` replaces the built-in prompts; the placeholders ``{word_budget}``,
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
