"""The main job, stage by stage; each stage skips work already done, so a rerun resumes.

    corpus → captions → model → sft_data → sft → rl_data → rl → eval

Every stage writes under ``output_dir`` and is a nested MLflow run of the pipeline's parent run.
A rerun skips finished stages and resumes an interrupted one from its last checkpoint (SFT and RL
keep their learner checkpoints and data positions). Ctrl-C writes a checkpoint, marks the MLflow
runs KILLED and exits; rerunning the same command continues.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from longvideo_r1.errors import InputError
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


def resolve_model(config: PipelineConfig) -> Path:
    from longvideo_r1.models import MODEL_NAMES, prepare_models

    if config.model in MODEL_NAMES:
        return prepare_models(config.models_dir, [config.model])[config.model]
    path = Path(config.model)
    if not (path / "config.json").is_file():
        raise InputError(f"model {config.model}: neither a prepared model name ({', '.join(MODEL_NAMES)}) "
                         "nor a transformers checkpoint folder with config.json")
    return path


def sft_data_stage(config: PipelineConfig, corpus_dir: Path, store: Path, out: Path) -> Path:
    from longvideo_r1.trainer.data import generate_sft

    path = out / "data" / "sft.jsonl"
    marker = out / "data" / "sft.done.json"
    d = config.data
    wanted = {"teacher": d.teacher, "model": d.model, "max_rounds": d.max_rounds}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        _log("sft_data", f"already written to {path}, skipping")
        return path
    from longvideo_r1.agent.teacher import make_teacher

    teacher = make_teacher(d.teacher, endpoint=d.endpoint, model=d.model)
    backend = None
    if d.video_qa != "none":
        from longvideo_r1.agent.video_qa import make_video_qa
        backend = make_video_qa(d.video_qa)
    summary = generate_sft(corpus_dir, store, teacher, path, split="train", max_rounds=d.max_rounds,
                           video_qa=backend, progress=False)
    _log("sft_data", f"{summary.get('kept', '?')} trajectories in {path}")
    marker.write_text(json.dumps(wanted))
    return path


def rl_data_stage(config: PipelineConfig, corpus_dir: Path, store: Path, out: Path) -> tuple[Path, Path | None]:
    from longvideo_r1.trainer.data import generate_rl, load_corpus_split

    paths = {}
    for split in ("train", "val"):
        path = out / "data" / f"rl_{split}.parquet"
        paths[split] = path
        if path.is_file():
            continue
        try:
            load_corpus_split(corpus_dir, split)
        except InputError:
            if split == "val":
                paths[split] = None
                continue
            raise
        generate_rl(corpus_dir, store, path, split=split, max_rounds=config.data.max_rounds)
    _log("rl_data", f"RL rows in {paths['train']}" + (f" and {paths['val']}" if paths["val"] else ""))
    return paths["train"], paths["val"]


def start_ray(config: PipelineConfig) -> None:
    import os

    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    address = config.ray.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = config.ray.num_cpus or max(4, os.cpu_count() or 1)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def eval_stage(config: PipelineConfig, corpus_dir: Path, store: Path, models: dict[str, Path], out: Path,
               tracker_run=None) -> dict:
    """The trained models (played by a vLLM rollout worker, greedy) and the baselines on the held-out split."""
    from longvideo_r1.eval.pipeline_eval import evaluate_stage

    return evaluate_stage(config, corpus_dir, store, models, out / "eval", tracker_run)


STAGES = ("corpus", "captions", "model", "sft_data", "sft", "rl_data", "rl", "eval")


def run_pipeline(config: PipelineConfig, until: str | None = None) -> dict:
    """Run every stage (skipping finished ones); ``until`` names the last stage to run."""
    if until is not None and until not in STAGES:
        raise InputError(f"stage {until!r}: choose one of {', '.join(STAGES)}")
    from longvideo_r1.platform.tracking import Tracker

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    seconds: dict[str, float] = {}
    tracker = Tracker(config.tracking, out, config.name)
    result: dict = {}
    with tracker.pipeline(params=to_dict(config), tags={"lvr1.output_dir": str(out)}) as parent:
        def stage(name, fn, *args):
            t = time.perf_counter()
            with tracker.stage(name) as run:      # each stage skips its own finished work
                value = fn(*args)
            seconds[name] = time.perf_counter() - t
            parent.log_metrics({f"time/{name}_s": seconds[name]})
            return value, run

        corpus_dir, _ = stage("corpus", corpus_stage, config, out)
        store, _ = stage("captions", captions_stage, config, corpus_dir, out)
        result = summarize(corpus_dir, store, seconds)
        if until == "captions" or not (config.sft.enabled or config.rl.enabled or config.eval.enabled):
            return _finish(out, result, seconds)
        base, _ = stage("model", resolve_model, config)
        start_ray(config)
        models = {"base": base}
        policy = base
        if config.sft.enabled:
            data, _ = stage("sft_data", sft_data_stage, config, corpus_dir, store, out)
            from longvideo_r1.trainer.sft import train_sft

            def sft():
                with tracker.stage("sft") as run:
                    return train_sft(config.sft, data, base, out / "sft", log_metrics=run.log_metrics,
                                     placement=config.placement)
            t = time.perf_counter()
            summary = sft()
            seconds["sft"] = time.perf_counter() - t
            policy = models["sft"] = Path(summary["model"])
            result["sft"] = {k: v for k, v in summary.items() if k != "history"}
        if until in ("sft_data", "sft", "model"):
            return _finish(out, result, seconds)
        if config.rl.enabled:
            train, val = stage("rl_data", rl_data_stage, config, corpus_dir, store, out)[0]
            from longvideo_r1.platform.rl_loop import train_rl

            t = time.perf_counter()
            with tracker.stage("rl") as run:
                summary = train_rl(config.rl, train, val, store, policy, out / "rl", log_metrics=run.log_metrics,
                                   placement=config.placement)
                if (out / "rl" / "samples").is_dir():
                    run.log_artifact(str(out / "rl" / "samples"), "samples")   # sample trajectories per step
            seconds["rl"] = time.perf_counter() - t
            models["sft+" + config.rl.algorithm if config.sft.enabled else config.rl.algorithm] = Path(summary["model"])
            result["rl"] = {k: v for k, v in summary.items() if k != "history"}
        if until in ("rl_data", "rl"):
            return _finish(out, result, seconds)
        if config.eval.enabled:
            t = time.perf_counter()
            with tracker.stage("eval") as run:
                result["eval"] = eval_stage(config, corpus_dir, store, models, out, run)
            seconds["eval"] = time.perf_counter() - t
        return _finish(out, result, seconds)


def _finish(out: Path, result: dict, seconds: dict) -> dict:
    result["stage_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    return result
