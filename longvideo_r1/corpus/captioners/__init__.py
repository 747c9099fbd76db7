"""Captioners turn the sampled frames of one caption-tree segment into caption text.

A captioner receives :class:`CaptionRequest` objects (frames already decoded and resized to the
level's longest side, their timestamps, the subtitle lines shown at each frame and, for a captioner
that sets ``wants_speech``, the transcribed speech of the segment) and yields one caption string per
request, in order. Three backends, and only one of them describes real footage:

- ``openai``: any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).
  Real captions (what happens, the people, the objects, the setting) need this: no model that can
  do it ships in a package, so it has to be served somewhere.
- ``offline``: real footage on the CPU, but it reports only what general signals find, with times:
  on-screen text (RapidOCR), speech (Whisper tiny.en), subtitle lines, cuts, brightness and motion.
  It cannot say what happens or who or what is on screen.
- ``demo``: only the generated demo world (coloured backgrounds, shapes, sign panels); its words
  would be invented on any other video.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol

import numpy as np

from longvideo_r1.errors import InputError


@dataclass
class CaptionRequest:
    """One segment to caption."""

    video_id: str
    level: str                      # "high" | "medium" | "low"
    ids: tuple[int, ...]            # 1-based segment id
    frames: np.ndarray              # (N, H, W, 3) uint8, longest side already <= the level's max
    frame_time: list[float]         # seconds of each frame
    subtitles: list[list[str]] = field(default_factory=list)  # subtitle lines shown at each frame
    word_budget: int = 200
    # (start s, end s, text) of the speech heard during the segment; filled only for a captioner
    # whose ``wants_speech`` is true (see ``corpus.captioning.caption_video``)
    speech: list[tuple[float, float, str]] = field(default_factory=list)


CAPTIONERS = ("demo", "offline", "openai")


def subtitle_spans(request: CaptionRequest) -> list[tuple[str, float, float]]:
    """Each distinct subtitle line shown on the request's frames, with the times of the first and last
    frame showing it, in order of first appearance (whitespace normalised, empty lines dropped)."""
    shown: dict[str, list[float]] = {}
    for t, lines in zip(request.frame_time, request.subtitles or []):
        for line in lines:
            line = " ".join(line.split())
            if line in shown:
                shown[line][1] = t
            elif line:
                shown[line] = [t, t]
    return [(line, a, b) for line, (a, b) in shown.items()]


class Captioner(Protocol):
    name: str
    # optional attribute ``wants_speech: bool``: true asks caption_video to transcribe the audio

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        """Yield one caption per request, in the order of ``requests``."""


def make_captioner(kind: str, **options) -> Captioner:
    """Build a captioner by name (one of :data:`CAPTIONERS`) from keyword options."""
    if kind == "demo":
        from longvideo_r1.corpus.captioners.demo import DemoCaptioner
        return DemoCaptioner(**options)
    if kind == "offline":
        from longvideo_r1.corpus.captioners.offline import OfflineCaptioner
        return OfflineCaptioner(**options)
    if kind == "openai":
        from longvideo_r1.corpus.captioners.openai_api import OpenAICaptioner
        return OpenAICaptioner(**options)
    raise InputError(f"captioner {kind!r} is unknown: choose 'openai' (a vision-language endpoint; real "
                     "captions), 'offline' (text, speech, cuts, brightness and motion only) or 'demo' "
                     "(the generated demo videos only)")
