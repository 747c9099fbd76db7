"""Caption one video: decode each segment's sampled frames and hand them to a captioner.

Frames are decoded level by level and streamed to the captioner as a lazy sequence of
:class:`CaptionRequest`, so memory holds only what the captioner keeps in flight. A captioner whose
``wants_speech`` attribute is true also gets, in each request, the speech heard during the segment:
the video is transcribed once (:func:`longvideo_r1.corpus.speech.transcribe`) and every request
receives the spoken segments that overlap its part of the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from longvideo_r1.corpus import speech, tree
from longvideo_r1.corpus.captioners import CaptionRequest, Captioner
from longvideo_r1.corpus.video import (VideoInfo, open_reader, parse_srt, read_frames, resize_max_side,
                                       subtitles_at)


@dataclass(frozen=True)
class CaptionRecord(tree.FrameSpan):
    """One caption of the tree, as the store keeps it."""

    video_id: str
    level: str
    ids: tuple[int, ...]
    caption: str
    frame_time: tuple[float, ...]
    frame_ids: tuple[int, ...]
    seg_start: float   # first frame of the part, seconds
    seg_end: float     # one past the last frame of the part, seconds


def strip_caption_tags(text: str) -> str:
    """Remove a ``<caption>…</caption>`` wrapper that VLM captioners (and the reference data) leave."""
    text = text.strip()
    if text.startswith("<caption>"):
        text = text[len("<caption>"):]
    if text.endswith("</caption>"):
        text = text[: -len("</caption>")]
    return text.strip()


def caption_video(info: VideoInfo, captioner: Captioner,
                  frames_per_level: dict[str, int] | None = None,
                  max_side: dict[str, int] | None = None) -> list[CaptionRecord]:
    """Every caption of ``info``'s tree, high level first (the order of :func:`tree.all_ids`)."""
    max_side = max_side or tree.MAX_SIDE
    segments = tree.build_segments(info.num_frames, info.fps, info.width, frames_per_level)
    subs = parse_srt(info.subtitle_path) if info.subtitle_path else []
    reader = open_reader(info.path)
    spoken = []
    if getattr(captioner, "wants_speech", False):
        spoken = speech.transcribe(info.path)

    def requests() -> Iterator[CaptionRequest]:
        for seg in segments:
            # Sampled ids repeat when a part has fewer frames than asked for; decode each once.
            unique, inverse = np.unique(np.asarray(seg.frame_ids), return_inverse=True)
            decoded = read_frames(reader, unique, info.path)
            frames = np.stack([resize_max_side(f, max_side[seg.level]) for f in decoded])[inverse]
            start, end = seg.first_frame / info.fps, (seg.last_frame + 1) / info.fps
            yield CaptionRequest(info.video_id, seg.level, seg.ids, frames, list(seg.frame_time),
                                 [subtitles_at(subs, t) for t in seg.frame_time],
                                 tree.WORD_BUDGET[seg.level],
                                 speech.spoken_during(spoken, start, end))

    captions = list(captioner.caption_many(requests()))
    if len(captions) != len(segments):
        raise RuntimeError(f"captioner {captioner.name} returned {len(captions)} captions "
                           f"for {len(segments)} segments of {info.video_id}")
    return [CaptionRecord(info.video_id, seg.level, seg.ids, strip_caption_tags(text), seg.frame_time,
                          seg.frame_ids, seg.first_frame / info.fps, (seg.last_frame + 1) / info.fps)
            for seg, text in zip(segments, captions)]
