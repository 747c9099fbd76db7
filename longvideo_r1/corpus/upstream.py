"""The reference caption format: one JSON file per video (PROTOCOL §1), imported into and exported from a store.

``{"video_name": str, "width": int, "captions": [high[w], medium[w²], low[w³]]}`` with entries
``{"segment_id", "level", "caption", "frame_time", "frame_ids"}``. Older files carry a fourth,
coarsest level first; it is skipped, as the reference tool does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


from longvideo_r1.corpus import tree
from longvideo_r1.corpus.captioning import CaptionRecord, strip_caption_tags
from longvideo_r1.corpus.store import CaptionStore, StoreWriter, VideoRecord, stage_video
from longvideo_r1.corpus.video import find_videos, probe_video, validate_video_id
from longvideo_r1.errors import InputError


def _fail(path: Path, what: str) -> InputError:
    return InputError(f"upstream caption file {path}: {what}; fix or remove the file")


def parse_upstream(path: str | Path, video_id: str | None = None,
                   info_from_video=None) -> tuple[VideoRecord, list[CaptionRecord]]:
    """Read one reference JSON file into a video record and its captions in tree order.

    Without the video file, ``fps`` is recovered from ``frame_ids``/``frame_time`` pairs and
    ``num_frames`` from the last low-level frame id (the last sampled frame of the last part).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("captions"), list):
        raise _fail(path, "expected an object with a 'captions' list of levels")
    levels = data["captions"]
    if len(levels) == 4:
        levels = levels[1:]
    if len(levels) != 3 or not all(isinstance(lv, list) and lv for lv in levels):
        raise _fail(path, f"expected 3 (or 4) non-empty caption levels, found {len(data['captions'])}")
    width = data.get("width", len(levels[0]))
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise _fail(path, f"'width' must be a positive integer, got {width!r}")
    for depth, (name, entries) in enumerate(zip(tree.LEVELS, levels), start=1):
        if len(entries) != width ** depth:
            raise _fail(path, f"{name} level has {len(entries)} captions, expected {width ** depth} for width {width}")
    video_id = validate_video_id(video_id or path.stem)

    entries = []
    for name, level_entries in zip(tree.LEVELS, levels):
        ordered = sorted(level_entries, key=lambda e: e.get("segment_id", 0) if isinstance(e, dict) else 0)
        for pos, entry in enumerate(ordered):
            if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
                raise _fail(path, f"{name} caption #{pos + 1} has no 'caption' text")
            times, frames = entry.get("frame_time"), entry.get("frame_ids")
            if not isinstance(times, list) or not times or not all(isinstance(t, (int, float)) for t in times):
                raise _fail(path, f"{name} caption #{pos + 1}: 'frame_time' must be a non-empty list of seconds")
            if not isinstance(frames, list) or len(frames) != len(times) or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in frames):
                raise _fail(path, f"{name} caption #{pos + 1}: 'frame_ids' must be non-negative integers, "
                                  "one per frame_time")
            entries.append((name, pos, entry))

    if info_from_video is not None:
        fps, num_frames = info_from_video.fps, info_from_video.num_frames
    else:
        pairs = [(i, t) for _, _, e in entries for i, t in zip(e["frame_ids"], e["frame_time"]) if t > 0]
        if not pairs:
            raise _fail(path, "cannot recover fps: every frame_time is 0; import with --videos DIR")
        big_id, big_t = max(pairs)
        fps = big_id / big_t
        num_frames = max(i for _, _, e in entries for i in e["frame_ids"]) + 1
    duration = tree.video_duration(num_frames, fps)

    parts = {lv: tree.level_parts(num_frames, width, lv) for lv in tree.LEVELS} \
        if num_frames >= width ** 3 else None
    records = []
    for name, pos, entry in entries:
        if parts is not None:
            part = parts[name][pos]
            seg_start, seg_end = part[0] / fps, (part[-1] + 1) / fps
        else:
            seg_start, seg_end = min(entry["frame_time"]), max(entry["frame_time"])
        records.append(CaptionRecord(video_id, name, tree.ids_from_flat(name, pos, width),
                                     strip_caption_tags(entry["caption"]),
                                     tuple(float(t) for t in entry["frame_time"]),
                                     tuple(int(i) for i in entry["frame_ids"]), float(seg_start), float(seg_end)))
    video = VideoRecord(video_id, width, duration, float(fps), int(num_frames),
                        info_from_video.path if info_from_video else None,
                        info_from_video.subtitle_path if info_from_video else None,
                        info_from_video.frame_width if info_from_video else None,
                        info_from_video.frame_height if info_from_video else None,
                        "upstream-json", time.time())
    return video, records


def import_upstream(json_dir: str | Path, store: str | Path, videos_dir: str | Path | None = None,
                    num_shards: int | None = None) -> dict:
    """Import every ``*.json`` of ``json_dir``; returns ``{"imported": [...], "skipped": [...], "failed": {...}}``."""
    json_dir = Path(json_dir)
    if not json_dir.is_dir():
        raise InputError(f"upstream caption folder {json_dir}: not a directory")
    files = sorted(json_dir.glob("*.json"))
    if not files:
        raise InputError(f"upstream caption folder {json_dir}: no .json files found")
    videos = dict(find_videos(videos_dir)) if videos_dir else {}
    report = {"imported": [], "skipped": [], "failed": {}}
    writer = StoreWriter(store, num_shards)
    with writer.locked():
        done = writer.finished_video_ids()
        for path in files:
            try:
                video_id = validate_video_id(path.stem)
                if video_id in done:
                    report["skipped"].append(video_id)
                    continue
                info = probe_video(videos[video_id], video_id) if video_id in videos else None
                video, records = parse_upstream(path, video_id, info)
                stage_video(store, video, records)
                report["imported"].append(video_id)
            except InputError as exc:
                report["failed"][path.name] = str(exc)
        writer.commit()
    return report


def export_upstream(store: CaptionStore, video_id: str) -> dict:
    """One video of a store in the reference JSON format (the inverse of :func:`parse_upstream`)."""
    captions = store.tree_captions(video_id)
    levels = []
    for level in tree.LEVELS:
        entries = [c for c in captions if c.level == level]
        levels.append([{"segment_id": pos + 1, "level": level, "caption": c.caption,
                        "frame_time": list(c.frame_time), "frame_ids": list(c.frame_ids)}
                       for pos, c in enumerate(entries)])
    return {"video_name": video_id, "width": store.video(video_id).width, "captions": levels}
