"""Caption-store lookup benchmark: the sharded Parquet store vs the reference per-call JSON read.

Builds a synthetic store of N videos of width 8 (584 captions each) and, beside it, the reference
layout (one JSON file per video), then times the same random lookups:

- reference: open and parse the video's JSON file on every call (what the reference tool server does);
- store, in-process: ``CaptionStore.get`` with the LRU cache off (every lookup a cold index hit) and on;
- store, through Ray: single ``get`` round trips, and batched ``get_many`` calls.

Prints lookups/s, p50/p99 latency, the store's size on disk and the serving actors' memory.
Usage: python bench/bench_store.py [--videos 2000] [--lookups 200000] [--json-lookups 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.captioning import CaptionRecord
from longvideo_r1.corpus.store import CaptionStore, StoreWriter, VideoRecord, stage_video

VOCAB = ("red blue green yellow purple orange circle square triangle moves left right top bottom sign reads "
         "the a of person walks into frame background changes scene text number word appears briefly while "
         "speaker says next then camera shows small large fast slow near far").split()


def synthetic_corpus(root: Path, videos: int, seed: int = 0) -> tuple[Path, Path, list[str]]:
    """Write a caption store and the reference JSON folder holding the same captions."""
    rng = np.random.default_rng(seed)
    fps, num_frames = 2.0, 14_400                      # two hours at 2 fps -> width 8
    width = tree.tree_width(num_frames / fps)
    assert width == 8
    segments = tree.build_segments(num_frames, fps, width, tree.CORPUS_FRAMES)
    words = {"high": 120, "medium": 100, "low": 70}
    store_dir, json_dir = root / "store", root / "json"
    json_dir.mkdir(parents=True)
    writer = StoreWriter(store_dir, 16)
    ids = [f"bench_{i:05d}" for i in range(videos)]
    with writer.locked():
        for n, video_id in enumerate(ids):
            texts = [" ".join(VOCAB[j] for j in rng.integers(0, len(VOCAB), words[s.level])) for s in segments]
            records = [CaptionRecord(video_id, s.level, s.ids, t, s.frame_time, s.frame_ids,
                                     s.first_frame / fps, (s.last_frame + 1) / fps) for s, t in zip(segments, texts)]
            stage_video(store_dir, VideoRecord(video_id, width, num_frames / fps, fps, num_frames), records)
            levels = [[{"segment_id": tree.flat_index(s.ids, width) + 1, "level": s.level,
                        "caption": f"<caption>{t}</caption>", "frame_time": list(s.frame_time),
                        "frame_ids": list(s.frame_ids)} for s, t in zip(segments, texts) if s.level == lv]
                      for lv in tree.LEVELS]
            (json_dir / f"{video_id}.json").write_text(json.dumps({"video_name": video_id, "width": width,
                                                                   "captions": levels}))
            if (n + 1) % 500 == 0:
                writer.commit()
                print(f"  built {n + 1}/{videos} videos", flush=True)
        writer.commit()
    return store_dir, json_dir, ids


def reference_lookup(json_dir: Path, video_id: str, ids: tuple[int, ...]) -> str:
    """What the reference tool does per call: read the whole JSON file, pick the level and index."""
    with open(json_dir / f"{video_id}.json") as f:
        data = json.load(f)
    entry = data["captions"][len(ids) - 1][tree.flat_index(ids, data["width"])]
    return entry["caption"].removeprefix("<caption>").removesuffix("</caption>")


def random_queries(ids: list[str], count: int, seed: int) -> list[tuple[str, tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        depth = int(rng.choice([1, 2, 3], p=[0.1, 0.3, 0.6]))
        out.append((ids[int(rng.integers(len(ids)))], tuple(int(x) for x in rng.integers(1, 9, depth))))
    return out


def timed(fn, queries) -> dict:
    lat = np.empty(len(queries))
    t0 = time.perf_counter()
    for i, (v, s) in enumerate(queries):
        a = time.perf_counter_ns()
        fn(v, s)
        lat[i] = time.perf_counter_ns() - a
    wall = time.perf_counter() - t0
    return {"lookups": len(queries), "per_s": len(queries) / wall,
            "p50_us": float(np.percentile(lat, 50)) / 1e3, "p99_us": float(np.percentile(lat, 99)) / 1e3}


def row(name: str, r: dict) -> str:
    return f"| {name} | {r['lookups']:,} | {r['per_s']:,.0f} | {r['p50_us']:,.1f} | {r['p99_us']:,.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--json-lookups", type=int, default=2000)
    parser.add_argument("--ray-lookups", type=int, default=5000)
    parser.add_argument("--workdir", default=None, help="where to build (default: a temporary folder)")
    args = parser.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="lvr1-bench-store-"))
    try:
        t0 = time.perf_counter()
        store_dir, json_dir, ids = synthetic_corpus(root, args.videos)
        build_s = time.perf_counter() - t0
        queries = random_queries(ids, args.lookups, seed=1)
        store_bytes = sum(p.stat().st_size for p in (store_dir / "shards").glob("*.parquet"))
        json_bytes = sum(p.stat().st_size for p in json_dir.glob("*.json"))

        # Correctness first: both approaches return the same text on a sample.
        store = CaptionStore(store_dir, cache_size=0)
        for v, s in queries[:200]:
            assert store.get(v, s).caption == reference_lookup(json_dir, v, s)

        results = {}
        results["reference: parse the video's JSON per call"] = timed(
            lambda v, s: reference_lookup(json_dir, v, s), queries[: args.json_lookups])
        cold = CaptionStore(store_dir, cache_size=0)
        for v in ids:                                   # load every shard before timing
            cold.video(v)
        results["store in-process, cache off"] = timed(cold.get, queries)
        warm = CaptionStore(store_dir, cache_size=len(queries))
        for v, s in queries:
            warm.get(v, s)
        results["store in-process, LRU cache warm"] = timed(warm.get, queries)

        import psutil
        import ray

        from longvideo_r1.corpus.serving import CaptionStoreClient

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        client = CaptionStoreClient(str(store_dir), num_actors=2, cache_size=65536)
        for v in ids:
            client.video(v)
        results["store via Ray, one get() per lookup"] = timed(client.get, queries[: args.ray_lookups])
        batch = 256
        t = time.perf_counter()
        lat = []
        for i in range(0, args.ray_lookups * 4, batch):
            a = time.perf_counter_ns()
            client.get_many(queries[i: i + batch])
            lat.append((time.perf_counter_ns() - a) / batch)
        wall = time.perf_counter() - t
        n = len(range(0, args.ray_lookups * 4, batch)) * batch
        results[f"store via Ray, get_many() batches of {batch}"] = {
            "lookups": n, "per_s": n / wall, "p50_us": float(np.percentile(lat, 50)) / 1e3,
            "p99_us": float(np.percentile(lat, 99)) / 1e3}
        actor_mem = client.memory()
        client.shutdown()
        ray.shutdown()

        ref = results["reference: parse the video's JSON per call"]["per_s"]
        print(f"\n## Caption store lookups ({args.videos:,} videos of width 8, "
              f"{args.videos * 584:,} captions)\n")
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
              f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}")
        print(f"built in {build_s:.0f} s; store on disk {store_bytes / 2**20:.1f} MiB "
              f"(reference JSON folder {json_bytes / 2**20:.1f} MiB)\n")
        print("| approach | lookups | lookups/s | p50 µs | p99 µs |")
        print("|---|---:|---:|---:|---:|")
        for name, r in results.items():
            print(row(name, r))
        print()
        for name, r in results.items():
            if not name.startswith("reference"):
                print(f"{name}: {r['per_s'] / ref:,.0f}x the per-call JSON approach")
        print("serving actors' resident memory: " +
              ", ".join(f"{m['rss_bytes'] / 2**20:.0f} MiB" for m in actor_mem))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
