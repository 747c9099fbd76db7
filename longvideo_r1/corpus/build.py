"""Build a caption store from a folder of videos: incremental, resumable, parallel over videos.

Each finished video is staged on disk the moment its last caption arrives, so a crash loses at most
the videos in progress; staged videos are committed into shards every ``commit_every`` videos and
at the end. A rerun skips every video that is committed or staged.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from longvideo_r1.corpus.captioners import make_captioner
from longvideo_r1.corpus.captioning import caption_video
from longvideo_r1.corpus.store import StoreWriter, VideoRecord, stage_video
from longvideo_r1.corpus.video import find_videos, probe_video
from longvideo_r1.errors import InputError


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # video id -> one-line error
    seconds: float = 0.0
    caption_seconds: dict[str, float] = field(default_factory=dict)


_CAPTIONERS: dict = {}


def _caption_one(path: str, video_id: str, store: str, captioner: str, options: dict,
                 frames_per_level: dict | None) -> tuple[str, float]:
    """Caption one video and stage it; runs in a worker process (or inline with one worker)."""
    key = (captioner, tuple(sorted(options.items())))
    if key not in _CAPTIONERS:
        _CAPTIONERS[key] = make_captioner(captioner, **options)
    t0 = time.perf_counter()
    info = probe_video(path, video_id)
    records = caption_video(info, _CAPTIONERS[key], frames_per_level)
    stage_video(store, VideoRecord.from_info(info, captioner), records)
    return video_id, time.perf_counter() - t0


def build_store(videos_dir: str | Path, store: str | Path, captioner: str = "offline",
                captioner_options: dict | None = None, num_shards: int | None = None, workers: int = 1,
                frames_per_level: dict | None = None, commit_every: int = 16,
                progress: bool = True, videos: list[tuple[str, Path]] | None = None) -> BuildReport:
    """Caption every video in ``videos_dir`` (or the ``(video_id, path)`` pairs of ``videos``) not yet in
    ``store`` and commit them into its shards."""
    t0 = time.perf_counter()
    options = dict(captioner_options or {})
    make_captioner(captioner, **options)  # fail fast on a bad captioner name or option
    videos = find_videos(videos_dir) if videos is None else videos
    if not videos:
        raise InputError(f"video folder {videos_dir}: no video files found "
                         "(looked for .mp4, .mkv, .avi, .mov, .webm, …)")
    report = BuildReport()
    writer = StoreWriter(store, num_shards)
    with writer.locked():
        done = writer.finished_video_ids()
        todo = [(vid, p) for vid, p in videos if vid not in done]
        report.skipped = [vid for vid, _ in videos if vid in done]
        bar = tqdm(total=len(todo), desc="captioning videos", unit="video", disable=not progress,
                   file=sys.stderr)
        since_commit = 0

        def finished(video_id: str, seconds: float) -> None:
            nonlocal since_commit
            report.built.append(video_id)
            report.caption_seconds[video_id] = seconds
            since_commit += 1
            if since_commit >= commit_every:
                writer.commit()
                since_commit = 0
            bar.update(1)

        args = [(str(p), vid, str(store), captioner, options, frames_per_level) for vid, p in todo]
        if workers <= 1:
            for a in args:
                try:
                    finished(*_caption_one(*a))
                except InputError as exc:
                    report.failed[a[1]] = str(exc)
                    bar.update(1)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(_caption_one, *a): a[1] for a in args}
                for fut in as_completed(futures):
                    try:
                        finished(*fut.result())
                    except InputError as exc:
                        report.failed[futures[fut]] = str(exc)
                        bar.update(1)
        bar.close()
        writer.commit()
    report.seconds = time.perf_counter() - t0
    return report
