"""The ``video_qa`` tool's backends: show one low-level clip to a vision model and ask it a question.

``video_qa((h, m, l), "query")`` (PROTOCOL §2) samples ``num_frames`` frames (16) evenly across the
low segment, shrinks them so the longest side is at most ``max_side`` (1024 px) and asks a model.
Three backends implement :class:`VideoQA` (:data:`VIDEO_QA_BACKENDS`):

- :class:`OpenAIVideoQA`: any OpenAI-compatible vision-language endpoint, with the reference tool's
  request shape: a system prompt asking for reasoning in ``<reasoning>`` and the answer in
  ``<answer>``, then one user message holding the query followed, frame by frame, by a text part
  ``Video frame at {t} seconds:`` and the frame as a JPEG data URL. Only the answer comes back.
- :class:`OfflineVideoQA`: real footage on a CPU, from the offline captioner's signals only: on-screen
  text (RapidOCR) with times, the speech heard during the clip (Whisper, transcribed once per
  video), subtitles, cuts, brightness and motion, with an answer focused on what the query asks
  (written text, or what is said); it cannot say what happens or who is on screen.
- :class:`DemoVideoQA`: the demo captioner's eyes (colour, shape and panel analysis, RapidOCR,
  subtitles) for the generated demo videos only. It sees only pixels and subtitles, never
  generator metadata.

Which frames form a clip (``split``)
------------------------------------
The caption tree splits a video's frames *flat*: ``array_split(range(N), w³)`` gives the low parts
(``corpus.tree.level_parts``), and each low caption was made from its flat part. The reference
video_qa tool instead locates a low segment by a *nested* split: ``array_split(range(N), w)`` → part
``h`` → split in ``w`` → part ``m`` → split in ``w`` → part ``l``. Both give the same parts when
``N`` divides evenly, but otherwise the flat split puts the ``N mod w³`` extra frames at the start of
the video while the nested one spreads them over each level, so the two clips can start up to about
``w³/4`` frames apart (DEVELOPERS.md). ``split="flat"`` (the default) shows the model the clip the
low caption describes; ``split="nested"`` reproduces the reference tool's clips exactly.

Cost accounting: :meth:`VideoQA.answer` returns the model's compute seconds alone; decoding and
resizing frames (and, for the endpoint, encoding JPEGs and waiting out retries) are left out.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np

from longvideo_r1 import storage
from longvideo_r1.corpus import tree
from longvideo_r1.corpus.captioners import CaptionRequest
from longvideo_r1.corpus.captioners.demo import DemoCaptioner, detail_sentences
from longvideo_r1.corpus.captioners.offline import OfflineCaptioner, absence_sentence, finding_sentences
from longvideo_r1.corpus.store import VideoRecord
from longvideo_r1.corpus.video import open_reader, parse_srt, read_frames, resize_max_side, subtitles_at
from longvideo_r1.errors import InputError
from longvideo_r1.openai_client import ChatClient, encode_jpeg

NUM_FRAMES = 16
MAX_SIDE = 1024
SPLITS = ("flat", "nested")
VIDEO_QA_BACKENDS = ("demo", "offline", "openai")

DEFAULT_SYSTEM_PROMPT = """\
You look at a short clip cut from a longer video and answer one question about it. The user gives \
the question first, then frames sampled evenly from the clip in time order, each after a line with \
its time in seconds.
First work out what the frames show that bears on the question, inside <reasoning></reasoning>. \
Then write the answer inside <answer></answer>: state what you see that answers the question, quote \
any visible text or numbers exactly, and give times where they help.
If nothing in the clip relates to the question, reply \
<answer>Nothing in this clip relates to the question.</answer>"""


# ---------------------------------------------------------------- which frames

def low_part(num_frames: int, width: int, ids: tuple[int, int, int], split: str = "flat") -> np.ndarray:
    """Frame indices of low segment ``ids`` under the ``flat`` or ``nested`` split (see the module doc)."""
    ids = tuple(int(i) for i in ids)
    if len(ids) != 3:
        raise InputError(f"video_qa segment {ids!r}: give the three ids (h, m, l) of a low-level segment")
    if split == "flat":
        return tree.level_parts(num_frames, width, "low")[tree.flat_index(ids, width)]
    if split == "nested":
        if num_frames < width ** 3:
            tree.level_parts(num_frames, width, "low")  # raises the tree's "too short" error
        part = np.arange(num_frames)
        for i in ids:
            part = np.array_split(part, width)[i - 1]
        return part
    raise InputError(f"video_qa split {split!r} is unknown: choose 'flat' (the frames the low caption "
                     "describes) or 'nested' (the reference tool's clips)")


class _ReaderCache:
    """A few open decord readers, most recently used last; one lock per reader (decord is not thread-safe)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._entries: OrderedDict[tuple, tuple[object, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> tuple[object, threading.Lock]:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise InputError(f"video {path}: cannot be read ({exc.strerror}); check the path") from None
        key = (path, stat.st_mtime_ns, stat.st_size)  # a rewritten file is opened afresh
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        entry = (open_reader(path), threading.Lock())
        with self._lock:
            entry = self._entries.setdefault(key, entry)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_READERS = _ReaderCache()
_SUBTITLES: OrderedDict[tuple, list] = OrderedDict()
_SUBTITLES_LOCK = threading.Lock()


def _subtitles(path: str) -> list:
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    with _SUBTITLES_LOCK:
        if key in _SUBTITLES:
            _SUBTITLES.move_to_end(key)
            return _SUBTITLES[key]
    subs = parse_srt(path)
    with _SUBTITLES_LOCK:
        _SUBTITLES[key] = subs
        while len(_SUBTITLES) > 8:
            _SUBTITLES.popitem(last=False)
    return subs


def clear_caches() -> None:
    """Forget the open video readers and parsed subtitles (they are reopened on the next call)."""
    _READERS.clear()
    with _SUBTITLES_LOCK:
        _SUBTITLES.clear()


def _check_clip_ids(video: VideoRecord, ids) -> tuple[int, int, int]:
    what = f"video {video.video_id}: video_qa segment"
    ids = tree.check_ids(ids, video.width, what)
    if len(ids) != 3:
        raise InputError(f"{what} {ids!r}: video_qa looks at a low-level segment; give three ids (h, m, l)")
    return ids


def clip_frames(video: VideoRecord, ids, num_frames: int = NUM_FRAMES, max_side: int = MAX_SIDE,
                split: str = "flat") -> tuple[np.ndarray, list[float], list[list[str]]]:
    """The frames of low segment ``ids`` that video_qa shows: ``(frames, times, subtitles)``.

    ``frames`` is ``(num_frames, H, W, 3)`` uint8 sampled evenly over the segment's part (``linspace``
    truncated, as the reference; frames repeat when the part is shorter), longest side at most
    ``max_side``; ``times`` are their seconds (0.1 s); ``subtitles`` the lines shown at each frame.
    """
    ids = _check_clip_ids(video, ids)
    _check_options(num_frames, max_side, split)
    path = video.source_path
    if not path:
        raise InputError(f"video {video.video_id}: the caption store records no video file, so video_qa "
                         "cannot show its frames; rebuild the store from the video files or pass the video path")
    path = str(storage.local_file(path))      # a video at a URI: this node's cached copy
    if not Path(path).is_file():
        raise InputError(f"video {video.video_id}: video file {path} not found, so video_qa cannot show its "
                         "frames; restore the file, rebuild the store from where the videos are now, or pass "
                         "the video path")
    part = low_part(video.num_frames, video.width, ids, split)
    frame_ids = tree.sample_frame_ids(part, num_frames)
    try:
        reader, lock = _READERS.get(path)
    except InputError as exc:
        raise InputError(f"video {video.video_id}: {exc}") from None
    if len(reader) != video.num_frames:
        raise InputError(f"video {video.video_id}: {path} has {len(reader)} frames but the caption store "
                         f"recorded {video.num_frames}; the file changed since the captions were built, "
                         "rebuild them")
    unique, inverse = np.unique(frame_ids, return_inverse=True)
    with lock:
        decoded = read_frames(reader, unique, path)
    frames = np.stack([resize_max_side(f, max_side) for f in decoded])[inverse]
    times = tree.frame_times(frame_ids, video.fps)
    subtitle_path = str(storage.local_file(video.subtitle_path)) if video.subtitle_path else None
    subs = _subtitles(subtitle_path) if subtitle_path and Path(subtitle_path).is_file() else []
    return frames, times, [subtitles_at(subs, t) for t in times]


# ---------------------------------------------------------------- the backends

class VideoQA(Protocol):
    name: str

    def answer(self, video: VideoRecord, ids: tuple[int, int, int], query: str) -> tuple[str, float]:
        """The answer text (no ``<information>`` wrapper) and the model's compute seconds."""


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THOUGHTS = re.compile(r"<(reasoning|think)>.*?</\1>", re.S)
_TAGS = re.compile(r"</?(reasoning|think|answer)>")


def extract_answer(reply: str) -> str:
    """The ``<answer>`` content of a reply; without one, the reply less its ``<reasoning>`` blocks.

    A reply cut off inside ``<answer>`` keeps what follows the tag; one that is all reasoning (cut
    off before answering) keeps the reasoning text rather than nothing.
    """
    match = _ANSWER.search(reply)
    if match:
        return match.group(1).strip()
    if "<answer>" in reply:
        return _TAGS.sub("", reply.rsplit("<answer>", 1)[1]).strip()
    rest = _TAGS.sub("", _THOUGHTS.sub("", reply)).strip()
    return rest or _TAGS.sub("", reply).strip()


def _check_query(query) -> str:
    if not isinstance(query, str):
        raise InputError(f"video_qa query {query!r}: give the question as a string")
    return query


def _check_options(num_frames: int, max_side: int, split: str) -> None:
    if num_frames < 1 or max_side < 1:
        raise InputError(f"video_qa: num_frames ({num_frames}) and max_side ({max_side}) must be at least 1")
    if split not in SPLITS:
        raise InputError(f"video_qa split {split!r} is unknown: choose 'flat' (the frames the low caption "
                         "describes) or 'nested' (the reference tool's clips)")


class OpenAIVideoQA:
    """video_qa through an OpenAI-compatible vision-language endpoint (e.g. ``vllm serve Qwen3-VL-32B``).

    ``system_prompt`` replaces ours. ``temperature`` None leaves the server's default (as the
    reference does). The seconds returned are those of the successful HTTP attempt (its request sent
    to its answer read: :meth:`~longvideo_r1.openai_client.ChatClient.complete_timed`). Retries and
    their waits are the openai SDK's (:mod:`longvideo_r1.openai_client`). ``endpoint`` may be a list of
    servers of the same model (the replicas of a served role): the calls take them in turn.
    """

    name = "openai"

    def __init__(self, endpoint: str | list[str], model: str, api_key: str | None = None, num_frames: int = NUM_FRAMES,
                 max_side: int = MAX_SIDE, split: str = "flat", timeout: float = 120.0, retries: int = 2,
                 max_tokens: int = 1024, system_prompt: str | None = None,
                 temperature: float | None = None, jpeg_quality: int = 90):
        _check_options(num_frames, max_side, split)
        if not 1 <= jpeg_quality <= 100:
            raise InputError(f"openai video_qa: jpeg_quality must be in 1..100, got {jpeg_quality}")
        urls = [endpoint] if isinstance(endpoint, str) or not endpoint else list(endpoint)
        self.clients = [ChatClient(url, model, api_key=api_key, timeout=timeout, retries=retries,
                                   what="openai video_qa", serves=" with image input") for url in urls]
        self.client = self.clients[0]
        self._calls = 0
        self._calls_lock = threading.Lock()
        self.num_frames = num_frames
        self.max_side = max_side
        self.split = split
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.jpeg_quality = jpeg_quality
        self.system_prompt = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt

    def __repr__(self) -> str:  # never show the API key
        return f"OpenAIVideoQA(endpoint={self.client.base_url!r}, model={self.client.model!r}, split={self.split!r})"

    def build_messages(self, query: str, frames: np.ndarray, times: list[float]) -> list[dict]:
        content = [{"type": "text", "text": query}]
        for frame, t in zip(frames, times):
            content.append({"type": "text", "text": f"Video frame at {t} seconds:"})
            content.append({"type": "image_url", "image_url": {"url": encode_jpeg(frame, self.jpeg_quality)}})
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]

    def answer(self, video: VideoRecord, ids, query: str) -> tuple[str, float]:
        query = _check_query(query)
        frames, times, _ = clip_frames(video, ids, self.num_frames, self.max_side, self.split)
        with self._calls_lock:
            client = self.clients[self._calls % len(self.clients)]
            self._calls += 1
        reply, seconds = client.complete_timed(
            self.build_messages(query, frames, times), max_tokens=self.max_tokens, temperature=self.temperature,
            context=f"video {video.video_id} video_qa on segment {tuple(ids)}")
        return extract_answer(reply), seconds


# What a query asks about, matched on its words outside quotes (a quoted line of dialogue is content,
# not a request). Topic names are those of ``demo.detail_sentences``.
_TOPIC_WORDS = {
    "signs": r"signs?|texts?|words?|written|writing|numbers?|digits?|reads?|reading|labels?|letters?|"
             r"displayed|shown on|spell\w*",
    "dialogue": r"say|says|said|saying|speak\w*|spoke\w*|dialog\w*|talk\w*|subtitles?|lines?|mention\w*|"
                r"hear\w*|voices?|conversation",
    "background": r"background|colou?rs?|scenes?|setting",
    "shapes": r"shapes?|circles?|squares?|triangles?|rectangles?|objects?|mov\w*|directions?|"
              r"(?:to|on) the (?:left|right)|left to right|right to left|upward|downward|positions?|where",
}
_TOPIC_RE = {topic: re.compile(rf"\b(?:{words})\b", re.I) for topic, words in _TOPIC_WORDS.items()}
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_NONE_SEEN = {
    "signs": "No sign or writing appears in this clip.",
    "dialogue": "Nobody speaks in this clip.",
    "shapes": "No coloured shapes are seen in this clip.",
}


def query_topics(query: str, patterns: dict[str, re.Pattern] = _TOPIC_RE) -> list[str]:
    """The topics of ``patterns`` a query asks about, in the order the query mentions them, matched
    outside quotes (none: a general question)."""
    text = _QUOTED.sub(" ", query)
    found = sorted((m.start(), topic) for topic, pattern in patterns.items() if (m := pattern.search(text)))
    return [topic for _, topic in found]


def _secs(t: float) -> str:
    return f"{t:.1f}".rstrip("0").rstrip(".") + " s"


class DemoVideoQA:
    """video_qa for the generated demo videos, with the demo captioner's analysis of frames and subtitles.

    The answer gathers what the frames show about the topics the query names (sign text, dialogue,
    background colour, shapes), in the query's order; a query naming none gets the full description.
    The seconds returned are the analysis time (frame decoding excluded).
    """

    name = "demo"

    def __init__(self, num_frames: int = NUM_FRAMES, max_side: int = MAX_SIDE, split: str = "flat",
                 ocr: bool = True, ocr_min_score: float = 0.6):
        _check_options(num_frames, max_side, split)
        self.num_frames = num_frames
        self.max_side = max_side
        self.split = split
        self._eyes = DemoCaptioner(ocr=ocr, ocr_min_score=ocr_min_score,
                                      frames_per_level={"low": num_frames})
        self._lock = threading.Lock()  # the OCR engine and its cache are shared state

    def answer(self, video: VideoRecord, ids, query: str) -> tuple[str, float]:
        query = _check_query(query)
        ids = _check_clip_ids(video, ids)
        frames, times, subtitles = clip_frames(video, ids, self.num_frames, self.max_side, self.split)
        request = CaptionRequest(video.video_id, "low", ids, frames, times, subtitles)
        with self._lock:
            started = time.perf_counter()
            topics = detail_sentences(request, self._eyes.look(request))
            text = self._write(query, topics, times)
            seconds = time.perf_counter() - started
        return text, seconds

    @staticmethod
    def _write(query: str, topics: dict[str, list[str]], times: list[float]) -> str:
        asked = query_topics(query)
        counting = re.search(r"\bhow many\b", query, re.I) is not None
        sentences = [f"The clip runs from {_secs(times[0])} to {_secs(times[-1])}."]
        if not asked:
            sentences += topics["background"] + topics["shapes"] + topics["signs"] + topics["dialogue"]
            if not topics["signs"] and not topics["dialogue"]:
                sentences.append("No sign or dialogue appears.")
            return " ".join(sentences)
        for topic in asked:
            found = topics[topic]
            if counting and found and topic == "signs":
                n = len(found)
                sentences.append(f"{n} sign{'s' if n != 1 else ''} appear{'s' if n == 1 else ''} in this clip.")
            if counting and found and topic == "dialogue":
                n = len(found)
                sentences.append(f"{n} line{'s' if n != 1 else ''} of dialogue {'are' if n != 1 else 'is'} "
                                 "spoken in this clip.")
            sentences += found or [_NONE_SEEN[topic]]
        return " ".join(sentences)


# What a query about real footage asks for, matched outside quotes as above.
_OFFLINE_TOPIC_WORDS = {
    "text": r"signs?|texts?|words?|written|writing|writes?|numbers?|digits?|reads?|reading|labels?|letters?|"
            r"titles?|captions?|banners?|posters?|displayed|shown on|on[- ]screen|spell\w*",
    "speech": r"say|says|said|saying|speak\w*|spoke\w*|dialog\w*|talk\w*|subtitles?|mention\w*|hear\w*|"
              r"voices?|conversation|tell\w*|told|asks?|asked|answers?|repl\w*|lines?|shout\w*|whisper\w*",
}
_OFFLINE_TOPIC_RE = {topic: re.compile(rf"\b(?:{words})\b", re.I) for topic, words in _OFFLINE_TOPIC_WORDS.items()}


def offline_query_topics(query: str) -> list[str]:
    """``text`` and/or ``speech`` when the query asks about them, in the query's order; [] otherwise."""
    return query_topics(query, _OFFLINE_TOPIC_RE)


class OfflineVideoQA:
    """video_qa on real footage on the CPU, from the offline captioner's signals.

    The clip's 16 frames give the on-screen text (with times), cuts, brightness and motion; its
    subtitles come with the frames; its speech is the video's transcription (made once per video by
    :func:`longvideo_r1.corpus.speech.transcribe`) cut to the clip's span. A query about written
    text gets the text, one about what is said gets speech and subtitles, any other query gets
    everything. It cannot say what happens or who is on screen (that needs the ``openai``
    backend). The seconds returned are the analysis time, transcription included when this call
    made it (frame decoding excluded).
    """

    name = "offline"

    def __init__(self, num_frames: int = NUM_FRAMES, max_side: int = MAX_SIDE, split: str = "flat",
                 ocr: bool = True, speech: bool = True, ocr_min_score: float = 0.8):
        _check_options(num_frames, max_side, split)
        self.num_frames = num_frames
        self.max_side = max_side
        self.split = split
        self.speech = speech
        self._eyes = OfflineCaptioner(ocr=ocr, speech=speech, ocr_min_score=ocr_min_score,
                                      ocr_frames={"low": num_frames}, frames_per_level={"low": num_frames})
        self._lock = threading.Lock()  # the OCR engine is shared state

    def answer(self, video: VideoRecord, ids, query: str) -> tuple[str, float]:
        query = _check_query(query)
        ids = _check_clip_ids(video, ids)
        frames, times, subtitles = clip_frames(video, ids, self.num_frames, self.max_side, self.split)
        part = low_part(video.num_frames, video.width, ids, self.split)
        start, end = part[0] / video.fps, (part[-1] + 1) / video.fps
        with self._lock:
            started = time.perf_counter()
            spoken = []
            if self.speech:
                from longvideo_r1.corpus.speech import spoken_during, transcribe
                try:
                    spoken = spoken_during(transcribe(str(storage.local_file(video.source_path))), start, end)
                except InputError as exc:
                    raise InputError(f"video {video.video_id}: {exc}") from None
            request = CaptionRequest(video.video_id, "low", ids, frames, times, subtitles, speech=spoken)
            findings = self._eyes.analyse(request)
            text = self._write(query, findings)
            seconds = time.perf_counter() - started
        return text, seconds

    @staticmethod
    def _write(query: str, findings) -> str:
        topics = finding_sentences(findings, "low")
        t0, t1 = findings.span
        sentences = [f"The clip runs from {_secs(t0)} to {_secs(t1)}." if t1 > t0 else
                     f"The clip is a single frame at {_secs(t0)}."]
        asked = offline_query_topics(query)
        if not asked:
            sentences += topics["look"] + topics["cuts"] + topics["text"]
            absent = absence_sentence(findings)
            if absent:
                sentences.append(absent)
            return " ".join(sentences + topics["speech"] + topics["subtitles"])
        for topic in asked:
            if topic == "text":
                sentences += topics["text"] or ["No on-screen text is read in this clip."]
            else:
                heard = topics["speech"] + topics["subtitles"]
                sentences += heard or ["No speech is heard and no subtitle is shown in this clip."]
        return " ".join(sentences)


def make_video_qa(kind: str, **options) -> VideoQA:
    """Build a video_qa backend by name (one of :data:`VIDEO_QA_BACKENDS`) from keyword options."""
    if kind == "demo":
        return DemoVideoQA(**options)
    if kind == "offline":
        return OfflineVideoQA(**options)
    if kind == "openai":
        return OpenAIVideoQA(**options)
    raise InputError(f"video_qa backend {kind!r} is unknown: choose 'openai' (a vision-language endpoint), "
                     "'offline' (on-screen text, speech, cuts, brightness and motion of real footage) or "
                     "'demo' (the generated demo videos only)")
