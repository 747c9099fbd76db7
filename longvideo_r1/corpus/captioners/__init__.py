"""Captioners turn the sampled frames of one caption-tree segment into caption text.

A captioner receives :class:`CaptionRequest` objects (frames already decoded and resized to the
level's longest side, their timestamps, the subtitle lines shown at each frame) and yields one
caption string per request, in order. Two backends:

- ``offline``: reads the pixels on the CPU (OCR, colour and shape statistics) plus subtitles;
- ``openai``: any OpenAI-compatible vision-language chat endpoint (e.g. ``vllm serve Qwen3-VL``).
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


class Captioner(Protocol):
    name: str

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        """Yield one caption per request, in the order of ``requests``."""


def make_captioner(kind: str, **options) -> Captioner:
    """Build a captioner by name (``offline`` or ``openai``) from keyword options."""
    if kind == "offline":
        from longvideo_r1.corpus.captioners.offline import OfflineCaptioner
        return OfflineCaptioner(**options)
    if kind == "openai":
        from longvideo_r1.corpus.captioners.openai_api import OpenAICaptioner
        return OpenAICaptioner(**options)
    raise InputError(f"captioner {kind!r} is unknown: choose 'offline' or 'openai'")
