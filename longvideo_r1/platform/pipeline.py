"""The main job, stage by stage; each stage skips work already done, so a rerun resumes.

Stages so far: the demo corpus, then its caption store. Later stages (SFT data, SFT, RL data,
GRPO, evaluation) append to :func:`run_pipeline`.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from longvideo_r1.platform.config import PipelineConfig, to_dict


def _log(stage: str, message: str) -> None:
    print(f"[lvr1 pipeline] {stage}: {message}", file=sys.stderr, flush=True)


def corpus_stage(config: PipelineConfig, out: Path) -> Path:
    from longvideo_r1.corpus.demo import generate_demo_corpus

    corpus_dir = out / "corpus"
    wanted = {"videos": config.corpus.videos, "minutes": config.corpus.minutes, "seed": config.corpus.seed}
    marker = out / "corpus.done.json"
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        _log("corpus", f"already generated in {corpus_dir}, skipping")
        return corpus_dir
    _log("corpus", f"generating {config.corpus.videos} demo videos into {corpus_dir}")
    generate_demo_corpus(corpus_dir, videos=config.corpus.videos, minutes=config.corpus.minutes,
                         seed=config.corpus.seed)
    marker.write_text(json.dumps(wanted))
    return corpus_dir


def captions_stage(config: PipelineConfig, corpus_dir: Path, out: Path) -> Path:
    from longvideo_r1.corpus.build import build_store
    from longvideo_r1.errors import InputError

    store = out / "store"
    c = config.captions
    options = ({"endpoint": c.endpoint, "model": c.model, "concurrency": c.concurrency}
               if c.captioner == "openai" else {})
    _log("captions", f"building caption store {store} with the {c.captioner} captioner")
    report = build_store(corpus_dir / "videos", store, c.captioner, options, c.shards, c.workers)
    _log("captions", f"built {len(report.built)}, skipped {len(report.skipped)} already done, "
                     f"in {report.seconds:.1f} s")
    if report.failed:
        raise InputError("caption store: " + "; ".join(report.failed.values()))
    return store


def summarize(corpus_dir: Path, store: Path, seconds: dict) -> dict:
    from longvideo_r1.corpus.store import CaptionStore

    questions = [json.loads(line) for line in (corpus_dir / "questions.jsonl").read_text().splitlines() if line]
    stats = CaptionStore(store).stats()
    manifest = json.loads((corpus_dir / "corpus.json").read_text())
    return {
        "videos": stats["videos"],
        "hours_of_video": round(sum(v["duration"] for v in manifest["videos"]) / 3600, 2),
        "questions": len(questions),
        "questions_per_split": dict(Counter(q["split"] for q in questions)),
        "questions_per_task": dict(Counter(q["task_type"] for q in questions)),
        "captions_per_level": stats["per_level"],
        "store_shards": stats["num_shards"],
        "store_bytes": stats["bytes_on_disk"],
        "stage_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def run_pipeline(config: PipelineConfig) -> dict:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    seconds = {}
    t = time.perf_counter()
    corpus_dir = corpus_stage(config, out)
    seconds["corpus"] = time.perf_counter() - t
    t = time.perf_counter()
    store = captions_stage(config, corpus_dir, out)
    seconds["captions"] = time.perf_counter() - t
    summary = summarize(corpus_dir, store, seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return summary
