"""Build a caption store from a folder of videos: incremental, resumable, parallel over videos.

Videos are captioned one per worker: inline (``workers`` 1), in ``workers`` local processes, or, when
Ray is there (``ray_address`` given, or Ray already initialised in this process), as Ray tasks, at
most ``workers`` at a time, spread over the cluster. A worker decodes its video where it runs and
sends the segments to the captioner; an ``openai`` captioner's requests go to one or more endpoints,
each with a limit on the requests in flight that holds for the whole build
(:class:`~longvideo_r1.corpus.endpoints.EndpointSlots`: in process, behind a ``multiprocessing``
manager for local processes, or as one Ray actor for the tasks), and an endpoint nobody answers at
stops the build before it starts, on one line.

The worker hands the finished video's captions back and this process stages it at once (one file,
written under a temporary name and renamed, so a half-written video is never visible); staged videos
are committed into shards every ``commit_every`` videos and at the end. Kill the build at any point
and a rerun skips every video that is committed or staged and captions the rest; a video is never in
the store twice (a commit replaces a video's rows).

Progress: a bar over the videos (with segments/s, request latency p50/p99, failed requests and
retries), the same figures in a log line every :data:`LOG_EVERY_S` seconds and at the end, and, with
``log_metrics``, as ``captions/*`` metrics (MLflow in the pipeline), at the step of the videos done.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from longvideo_r1.corpus.captioners import make_captioner
from longvideo_r1.corpus.captioning import CaptionRecord, caption_video
from longvideo_r1.corpus.endpoints import EndpointSlots, RaySlots, check_reachable, endpoint_list
from longvideo_r1.corpus.store import StoreWriter, VideoRecord, stage_video
from longvideo_r1.corpus.video import find_videos, probe_video
from longvideo_r1.errors import InputError

log = logging.getLogger("longvideo_r1.corpus.build")

LOG_EVERY_S = 30.0
"""seconds between two progress lines in the log (and two points of the metrics)"""
POLL_S = 1.0
"""seconds between two refreshes of the bar while videos are in flight"""


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)   # video id -> one-line error
    seconds: float = 0.0
    caption_seconds: dict[str, float] = field(default_factory=dict)
    segments: int = 0                                       # captions of the videos built
    requests: dict = field(default_factory=dict)            # openai: requests, failed_requests, retries, latency p50/p99
    executor: str = "inline"                                # inline, processes or ray


_CAPTIONERS: dict = {}


def _captioner(kind: str, options: dict):
    """The captioner of a worker: an openai one per video (it takes the build's endpoint slots),
    the others built once per process (the offline one loads its models)."""
    if kind == "openai":
        return make_captioner(kind, **options)
    key = (kind, repr(sorted(options.items())))
    if key not in _CAPTIONERS:
        _CAPTIONERS[key] = make_captioner(kind, **options)
    return _CAPTIONERS[key]


def _caption_one(path: str, video_id: str, captioner: str, options: dict, frames_per_level: dict | None
                 ) -> tuple[str, VideoRecord | None, list[CaptionRecord] | str, float]:
    """Decode and caption one video where this runs (inline, a worker process or a Ray task):
    ``(video_id, video, records, seconds)``, or ``(video_id, None, one-line error, seconds)``."""
    t0 = time.perf_counter()
    made = _captioner(captioner, options)
    try:
        info = probe_video(path, video_id)
        records = caption_video(info, made, frames_per_level)
    except InputError as exc:
        return video_id, None, str(exc), time.perf_counter() - t0
    finally:
        if captioner == "openai":
            made.close()
    return video_id, VideoRecord.from_info(info, captioner), records, time.perf_counter() - t0


class _SlotsManager(BaseManager):
    """Serves one :class:`EndpointSlots` to the local worker processes."""


_SlotsManager.register("EndpointSlots", EndpointSlots)


def use_ray(ray_address: str | None) -> bool:
    """Caption as Ray tasks: an address is given, or this process already joined a Ray cluster."""
    if ray_address:
        return True
    ray = sys.modules.get("ray")          # never import Ray just to ask
    return ray is not None and ray.is_initialized()


class _Progress:
    """The bar, the periodic log line and the metrics of one build."""

    def __init__(self, total: int, show: bool, slots, log_metrics: Callable | None):
        self.bar = tqdm(total=total, desc="captioning videos", unit="video", disable=not show, file=sys.stderr)
        self.total = total
        self.slots = slots
        self.log_metrics = log_metrics
        self.start = self.last_log = time.monotonic()
        self.done = self.failed = self.segments = 0

    def video(self, segments: int | None) -> None:
        """One video finished (``segments`` captions) or failed (None)."""
        if segments is None:
            self.failed += 1
        else:
            self.done += 1
            self.segments += segments
        self.bar.update(1)
        self.refresh()

    def figures(self) -> dict:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        figures = {"videos_done": self.done, "videos_failed": self.failed, "segments": self.segments,
                   "segments_per_s": self.segments / elapsed}
        if self.slots is not None:
            stats = self.slots.stats()
            figures.update(requests=stats["requests"], failed_requests=stats["failed"], retries=stats["retries"],
                           latency_p50_s=stats["latency_p50_s"], latency_p99_s=stats["latency_p99_s"])
        return figures

    def refresh(self, final: bool = False) -> dict:
        figures = self.figures()
        postfix = {"seg/s": f"{figures['segments_per_s']:.1f}"}
        if figures.get("latency_p50_s") is not None:
            postfix.update(p50=f"{figures['latency_p50_s']:.2f}s", p99=f"{figures['latency_p99_s']:.2f}s",
                           failed=figures["failed_requests"], retries=figures["retries"])
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()
        now = time.monotonic()
        if final or now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            log.info("captions: %s", _line(figures, self.total))
            if self.log_metrics is not None:
                self.log_metrics({f"captions/{k}": v for k, v in figures.items() if v is not None},
                                 self.done + self.failed)
        return figures

    def close(self) -> dict:
        figures = self.refresh(final=True)
        self.bar.close()
        return figures


def _line(f: dict, total: int) -> str:
    line = (f"{f['videos_done']}/{total} videos ({f['videos_failed']} failed), {f['segments']} segments, "
            f"{f['segments_per_s']:.2f} segments/s")
    if f.get("latency_p50_s") is not None:
        line += (f"; requests {f['requests']}, latency p50 {f['latency_p50_s']:.3f} s p99 {f['latency_p99_s']:.3f} s, "
                 f"{f['failed_requests']} failed, {f['retries']} retried")
    return line


def build_store(videos_dir: str | Path, store: str | Path, captioner: str = "offline",
                captioner_options: dict | None = None, num_shards: int | None = None, workers: int = 1,
                frames_per_level: dict | None = None, commit_every: int = 16,
                progress: bool = True, videos: list[tuple[str, Path]] | None = None,
                ray_address: str | None = None, log_metrics: Callable[[dict, int], None] | None = None
                ) -> BuildReport:
    """Caption every video in ``videos_dir`` (or the ``(video_id, path)`` pairs of ``videos``) not yet in
    ``store`` and commit them into its shards (see the module doc for where the work runs).

    ``captioner_options`` of an openai captioner: ``endpoint`` (one base URL or a list),
    ``concurrency_per_endpoint`` (requests in flight at one endpoint for the whole build; default
    ``workers`` × ``concurrency``, each video's own limit), and the captioner's other options.
    ``log_metrics(metrics, step)`` receives the progress figures (``captions/*``)."""
    t0 = time.perf_counter()
    options = dict(captioner_options or {})
    if workers < 1:
        raise InputError(f"workers: {workers!r}; caption at least one video at a time")
    ray = use_ray(ray_address)
    endpoints, limit = None, None
    if captioner == "openai":
        endpoints = endpoint_list(options.get("endpoint"))
        limit = options.pop("concurrency_per_endpoint", None) or workers * options.get("concurrency", 8)
        options["endpoint"] = endpoints
    # fail fast on a bad captioner name or option (and an openai captioner's endpoint limit)
    make_captioner(captioner, **options, **({} if limit is None else {"concurrency_per_endpoint": limit}))
    videos = find_videos(videos_dir) if videos is None else videos
    if not videos:
        raise InputError(f"video folder {videos_dir}: no video files found "
                         "(looked for .mp4, .mkv, .avi, .mov, .webm, …)")
    if endpoints is not None:
        check_reachable(endpoints, timeout=min(float(options.get("timeout", 10.0)), 10.0))
    report = BuildReport(executor="ray" if ray else "processes" if workers > 1 else "inline")
    if ray:
        from longvideo_r1.actors import init_ray

        init_ray(ray_address)
    writer = StoreWriter(store, num_shards)
    with writer.locked():
        done = writer.finished_video_ids()
        todo = [(vid, p) for vid, p in videos if vid not in done]
        report.skipped = [vid for vid, _ in videos if vid in done]
        since_commit = 0

        def finished(video_id: str, video: VideoRecord | None, records, seconds: float) -> None:
            nonlocal since_commit
            if video is None:
                report.failed[video_id] = records
                bar.video(None)
                return
            stage_video(store, video, records)        # atomic: temp file, then rename
            report.built.append(video_id)
            report.caption_seconds[video_id] = seconds
            report.segments += len(records)
            since_commit += 1
            if since_commit >= commit_every:
                writer.commit()
                since_commit = 0
            bar.video(len(records))

        run = {"inline": _run_inline, "processes": _run_processes, "ray": _run_ray}[report.executor]
        concurrency = options.get("concurrency", 8)
        with _endpoint_slots(report.executor, endpoints, limit, workers * concurrency) as slots:
            if slots is not None:
                options["slots"] = slots
            bar = _Progress(len(todo), progress, slots, log_metrics)
            try:
                run([(str(p), vid, captioner, options, frames_per_level) for vid, p in todo], workers,
                    bar.refresh, finished)
            finally:
                figures = bar.close()
        report.requests = {k: figures[k] for k in ("requests", "failed_requests", "retries", "latency_p50_s",
                                                   "latency_p99_s") if k in figures}
        writer.commit()
    report.seconds = time.perf_counter() - t0
    return report


@contextmanager
def _endpoint_slots(executor: str, endpoints: list[str] | None, limit: int | None, threads: int):
    """The build's :class:`EndpointSlots`, reachable from where the videos are captioned (None
    without endpoints). ``threads``: the request threads that may wait for a slot at once."""
    if endpoints is None:
        yield None
    elif executor == "inline":
        yield EndpointSlots(endpoints, limit)
    elif executor == "processes":
        with _SlotsManager(ctx=multiprocessing.get_context("spawn")) as manager:
            yield manager.EndpointSlots(endpoints, limit)
    else:
        from longvideo_r1.actors import ActorGroup

        # a waiting acquire() holds one actor thread: one for every request thread of every task
        group = ActorGroup(EndpointSlots, 1, (endpoints, limit), what="caption endpoint slots",
                           options={"num_cpus": 0, "max_concurrency": threads + 8})
        group.start()
        try:
            yield RaySlots(group[0])
        finally:
            group.shutdown()


def _run_inline(jobs: list[tuple], workers: int, refresh: Callable, finished: Callable) -> None:
    for job in jobs:
        finished(*_caption_one(*job))


def _run_processes(jobs: list[tuple], workers: int, refresh: Callable, finished: Callable) -> None:
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(_caption_one, *job) for job in jobs}
        while pending:
            ready, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in ready:
                finished(*future.result())
            refresh()


def _run_ray(jobs: list[tuple], workers: int, refresh: Callable, finished: Callable) -> None:
    """At most ``workers`` Ray tasks at a time, one per video; results are staged as they come."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    task = ray.remote(_caption_one).options(num_cpus=1)
    queue = list(reversed(jobs))
    running: dict = {}
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop()
                running[task.remote(*job)] = job[1]
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for ref in ready:
                video_id = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayTaskError:
                    raise                 # a bug in the captioning code: stop, with its traceback
                except RayError as exc:   # its worker or node died (after Ray's own retries)
                    result = (video_id, None, f"video {video_id}: its Ray task was lost ({type(exc).__name__}); "
                                              "rerun the build to caption it", 0.0)
                finished(*result)
            refresh()
    finally:
        for ref in running:
            ray.cancel(ref, force=True)
