"""`lvr1 corpus check` speed: CG-Bench annotation rows against a folder of real encoded videos.

Encodes ``--videos`` small H.264 clips with PyAV (``--frames`` frames of 64x48 at 4 fps each, enough
for a caption tree of width 4), writes ``--rows`` CG-Bench rows spread over them (a JSON list; a few
rows carry a problem, as real files do), then times :func:`check_corpus` with probing (every video
opened and a frame decoded by decord, once per video, in threads) and without (files only), each
``--repeat`` times, best run reported. Prints the seconds and rows/s of each.
Usage: python bench/bench_corpus_check.py [--rows 1000] [--videos 50] [--frames 96] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from longvideo_r1.corpus.check import check_corpus

FPS = 4


def encode(path: Path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    base = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    for i in range(frames):
        image = np.roll(base, i, axis=1)
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


def rows_for(n_rows: int, video_ids: list[str], duration: float, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_rows):
        start = float(rng.uniform(0, duration - 4))
        row = {"qid": f"q{k:05d}", "video_uid": video_ids[k % len(video_ids)], "question": f"What happens at {k}?",
               "choices": ["a red ball", "a blue box", "a green cup", "a white cat"], "right_answer": "ABCD"[k % 4],
               "clue_intervals": [[round(start, 1), round(start + 3, 1)]],
               "task_type": ("counting", "ocr", "event order", "attribute")[k % 4]}
        if k % 100 == 99:            # 1% of the rows with a problem
            row["right_answer"] = "F"
        rows.append(row)
    return rows


def best_of(repeat: int, fn):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--frames", type=int, default=96, help="frames per video at 4 fps (>= 64)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-corpus-check-") as tmp:
        root = Path(tmp)
        folder = root / "videos"
        folder.mkdir()
        t0 = time.perf_counter()
        ids = [f"bench_{i:03d}" for i in range(args.videos)]
        for i, video_id in enumerate(ids):
            encode(folder / f"{video_id}.mp4", args.frames, i)
        encode_s = time.perf_counter() - t0
        ann = root / "cgbench.json"
        ann.write_text(json.dumps(rows_for(args.rows, ids, args.frames / FPS)))

        probed_s, report = best_of(args.repeat, lambda: check_corpus(folder, ann))
        files_s, _ = best_of(args.repeat, lambda: check_corpus(folder, ann, probe=False))

    s = report.summary()
    print(f"## `lvr1 corpus check` — `python bench/bench_corpus_check.py --rows {args.rows} --videos {args.videos}`\n")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}.")
    print(f"{args.rows:,} CG-Bench rows (JSON list) over {args.videos} real H.264 clips (64x48, {args.frames} frames "
          f"at {FPS} fps, encoded in {encode_s:.1f} s); {s['questions']} valid questions, {s['problems']} problems. "
          f"Best of {args.repeat}.\n")
    print("| check | seconds | rows/s |")
    print("|---|---:|---:|")
    print(f"| with probing (decord opens each video once, {min(8, args.videos)} threads) | {probed_s:.3f} | "
          f"{args.rows / probed_s:,.0f} |")
    print(f"| files only (--no-probe) | {files_s:.3f} | {args.rows / files_s:,.0f} |")


if __name__ == "__main__":
    main()
