"""Captioning throughput as Ray tasks: 1 and 2 workers × N requests in flight, against endpoints of fixed latency.

Builds a caption store (``longvideo_r1.corpus.build.build_store``, the openai captioner, a local Ray
of 2 CPUs) from ``--videos`` H.264 clips (``tests/media.encode_ramp``, 18–30 s at 4 fps, 64x48: 84
segments each, decoded by decord in the tasks), sending every segment to OpenAI-compatible test
servers on 127.0.0.1 (``tests/chat_server.py``) that answer after ``--latency`` seconds, so the
figures show how far the requests overlap: a build can do at most
``min(workers × concurrency, endpoints × limit) / latency`` segments/s. Segments carry
``--frames`` frames per level (default 8/4/2 for high/medium/low, so the CPU work per request
stays small next to the latency on 2 cores; ``--frames corpus`` sends the corpus's 128/64/32,
where JPEG encoding in the tasks and decoding in the test server take the cores).

Prints one row per setting: workers (Ray tasks at once), concurrency (requests in flight per
video), endpoints × their limit, segments/s, that bound, request latency p50/p99 as the client saw
it (the server's delay plus the HTTP round trip; queueing shows in p99), and the wall time.
Usage: python bench/bench_captioning_ray.py [--videos 3] [--latency 0.1] [--frames light|corpus]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # for tests.*

from longvideo_r1.corpus.build import build_store  # noqa: E402
from tests.chat_server import ChatServer  # noqa: E402
from tests.media import encode_ramp  # noqa: E402

# (workers, requests in flight per video, endpoints, limit per endpoint)
SETTINGS = [(1, 1, 1, 64), (1, 4, 1, 64), (1, 16, 1, 64), (2, 1, 1, 64), (2, 4, 1, 64), (2, 16, 1, 64),
            (2, 16, 2, 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=3, help="clips captioned per setting (default 3)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each server takes per request (default 0.1)")
    parser.add_argument("--frames", choices=["light", "corpus"], default="light",
                        help="frames per segment: light 8/4/2 (default) or the corpus's 128/64/32")
    args = parser.parse_args()
    frames = {"high": 8, "medium": 4, "low": 2} if args.frames == "light" else None

    import ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    root = Path(tempfile.mkdtemp(prefix="bench_captioning_ray_"))
    try:
        videos = root / "videos"
        videos.mkdir()
        for i in range(args.videos):
            encode_ramp(videos / f"clip_{i:02d}.mp4", frames=72 + 8 * (i % 6))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, load "
              f"{os.getloadavg()[0]:.1f}; {args.videos} videos x 84 segments, {args.frames} frames, server latency "
              f"{args.latency:g} s per request\n")
        print("| workers | in flight per video | endpoints x limit | segments/s | bound | p50 latency s | "
              "p99 latency s | failed | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, (workers, concurrency, endpoints, limit) in enumerate(SETTINGS):
            with ExitStack() as stack:
                servers = [stack.enter_context(ChatServer(delay=args.latency)) for _ in range(endpoints)]
                options = {"endpoint": [s.base_url for s in servers], "model": "bench-vlm",
                           "concurrency": concurrency, "concurrency_per_endpoint": limit}
                t0 = time.perf_counter()
                report = build_store(videos, root / f"store-{n}", "openai", options, workers=workers,
                                     frames_per_level=frames, progress=False)
                wall = time.perf_counter() - t0
            if report.failed or report.executor != "ray":
                raise SystemExit(f"setting {n}: {report.executor}, failed {report.failed}")
            r = report.requests
            bound = min(workers * concurrency, endpoints * limit) / args.latency
            print(f"| {workers} | {concurrency} | {endpoints} x {limit} | {report.segments / report.seconds:.1f} | "
                  f"{bound:.0f} | {r['latency_p50_s']:.3f} | {r['latency_p99_s']:.3f} | {r['failed_requests']} | "
                  f"{wall:.1f} |", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
