"""The hierarchical caption tree of a video (PROTOCOL §1), as pure functions.

A video of ``num_frames`` frames at ``fps`` gets a width ``w``; its frame indices are split into
``w`` (high), ``w²`` (medium) and ``w³`` (low) nearly equal consecutive parts, numpy
``array_split`` style. Segment ids are 1-based tuples: ``(h,)``, ``(h, m)``, ``(h, m, l)``.
Nothing here decodes video or touches disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from longvideo_r1.errors import InputError

LEVELS = ("high", "medium", "low")
LEVEL_DEPTH = {"high": 1, "medium": 2, "low": 3}

# Reference corpus-building values: frames sampled per caption, longest image side, word budget.
CORPUS_FRAMES = {"high": 128, "medium": 64, "low": 32}
ONLINE_FRAMES = {"high": 64, "medium": 32, "low": 16}
MAX_SIDE = {"high": 256, "medium": 362, "low": 512}
WORD_BUDGET = {"high": 400, "medium": 400, "low": 200}

LEAF_SECONDS = 16.0
MIN_WIDTH = 4
MAX_WIDTH = 8


def video_duration(num_frames: int, fps: float) -> float:
    """Duration as the reference computes it: frame count over average fps (not the container's)."""
    return num_frames / fps


def tree_width(duration: float, leaf_seconds: float = LEAF_SECONDS,
               min_width: int = MIN_WIDTH, max_width: int = MAX_WIDTH) -> int:
    """``clamp(round((duration / leaf_seconds) ** (1/3)), min_width, max_width)``.

    ``round`` is Python's (half to even), matching the reference implementation.
    """
    return max(min_width, min(max_width, round((duration / leaf_seconds) ** (1 / 3))))


def level_of(ids: tuple[int, ...]) -> str:
    return LEVELS[len(ids) - 1]


def num_segments(width: int, level: str) -> int:
    return width ** LEVEL_DEPTH[level]


def flat_index(ids: tuple[int, ...], width: int) -> int:
    """0-based position of a segment within its level: ``(h-1)·w² + (m-1)·w + (l-1)`` for low."""
    index = 0
    for i in ids:
        index = index * width + (i - 1)
    return index


def ids_from_flat(level: str, index: int, width: int) -> tuple[int, ...]:
    depth = LEVEL_DEPTH[level]
    ids = []
    for _ in range(depth):
        index, rem = divmod(index, width)
        ids.append(rem + 1)
    return tuple(reversed(ids))


def all_ids(width: int) -> list[tuple[int, ...]]:
    """Every segment id of a tree, high level first, each level in flat-index order."""
    return [ids_from_flat(level, i, width) for level in LEVELS for i in range(num_segments(width, level))]


def check_ids(ids, width: int, what: str = "segment id") -> tuple[int, ...]:
    """Validate a 1–3 tuple of ints in ``1..width``; raise :class:`InputError` saying what is wrong."""
    if not isinstance(ids, (tuple, list)) or not 1 <= len(ids) <= 3:
        raise InputError(f"{what} {ids!r}: give 1 to 3 integers (h [m [l]])")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"{what} {tuple(ids)!r}: every id must be an integer, got {i!r}")
        if not 1 <= i <= width:
            raise InputError(f"{what} {tuple(ids)!r}: ids run from 1 to {width} for a tree of width {width}")
    return tuple(int(i) for i in ids)


def level_parts(num_frames: int, width: int, level: str) -> list[np.ndarray]:
    """Frame indices of every segment of a level (flat ``array_split`` of ``0..num_frames-1``)."""
    n = num_segments(width, level)
    if num_frames < width ** 3:
        raise InputError(f"a video of {num_frames} frames is too short for a tree of width {width}: "
                         f"it needs at least {width ** 3} frames (one per low-level segment)")
    return np.array_split(np.arange(num_frames), n)


def sample_frame_ids(part: np.ndarray, count: int) -> np.ndarray:
    """``count`` frame ids spread evenly over a part: ``linspace(first, last, count)`` truncated to int."""
    return np.linspace(part[0], part[-1], count, dtype=int)


def frame_times(frame_ids, fps: float) -> list[float]:
    """Seconds of each frame, rounded to 0.1 s like the reference's ``frame_time``."""
    return [round(int(i) / fps, 1) for i in frame_ids]


class FrameSpan:
    """Mixin for records with ``frame_time``: the span shown to the agent is the first and last
    sampled frame time (PROTOCOL §2), not the segment's true boundaries."""

    frame_time: tuple[float, ...]

    @property
    def start(self) -> float:
        return self.frame_time[0]

    @property
    def end(self) -> float:
        return self.frame_time[-1]


@dataclass(frozen=True)
class Segment(FrameSpan):
    """One node of the caption tree and the frames its caption is made from."""

    level: str
    ids: tuple[int, ...]
    first_frame: int
    last_frame: int
    frame_ids: tuple[int, ...]
    frame_time: tuple[float, ...]


def build_segments(num_frames: int, fps: float, width: int,
                   frames_per_level: dict[str, int] | None = None) -> list[Segment]:
    """All segments of a video's tree in :func:`all_ids` order, with their sampled frames."""
    frames_per_level = frames_per_level or CORPUS_FRAMES
    segments = []
    for level in LEVELS:
        for index, part in enumerate(level_parts(num_frames, width, level)):
            ids = sample_frame_ids(part, frames_per_level[level])
            segments.append(Segment(level, ids_from_flat(level, index, width), int(part[0]), int(part[-1]),
                                    tuple(int(i) for i in ids), tuple(frame_times(ids, fps))))
    return segments


def segment_interval(ids: tuple[int, ...], width: int, duration: float) -> tuple[float, float]:
    """Nominal time range of a segment for the reward (PROTOCOL §3): ``[start, start + D/w^k]`` clipped to D."""
    start = 0.0
    for depth, i in enumerate(ids, start=1):
        start += (i - 1) * duration / width ** depth
    return start, min(duration, start + duration / width ** len(ids))
