"""The pipeline's evaluation stage: trained checkpoints and baselines side by side on the held-out split.

Checkpoints are played by a vLLM rollout worker (greedy, the RL episode rules, all questions
batched), baselines by :func:`longvideo_r1.eval.evaluate.run_eval`; both write the same per-question
result lines (``<label>.jsonl``), so one report (:func:`longvideo_r1.eval.report.write_report`)
covers all of them. A label whose result file already covers every question is not replayed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from longvideo_r1.errors import InputError


def _done(path: Path, qids: set) -> bool:
    from longvideo_r1.eval.evaluate import read_results

    return path.is_file() and qids <= {r["qid"] for r in read_results(path)}


# config.json keys that say nothing about the weights' shapes or how text becomes tokens
_LOOSE_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures", "use_cache"}
_TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt",
                    "generation_config.json")
# tokenizer_config.json keys that a save by another transformers version writes differently (the
# fast tokenizer itself is tokenizer.json, compared byte for byte)
_LOOSE_TOKENIZER_KEYS = {"is_local", "local_files_only", "tokenizer_class", "name_or_path"}


def engine_key(model: Path) -> tuple | None:
    """What must match for two checkpoints to share one engine: the model config (shapes) and the
    tokenizer/chat-template files byte for byte. None when the folder has no config.json."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    shape = {k: v for k, v in json.loads(config.read_text()).items() if k not in _LOOSE_KEYS}
    files = tuple((name, (Path(model) / name).read_bytes() if (Path(model) / name).is_file() else None)
                  for name in _TOKENIZER_FILES)
    tok = Path(model) / "tokenizer_config.json"
    tok_config = {k: v for k, v in json.loads(tok.read_text()).items() if k not in _LOOSE_TOKENIZER_KEYS} \
        if tok.is_file() else None
    return json.dumps(shape, sort_keys=True), json.dumps(tok_config, sort_keys=True), files


def evaluate_checkpoint(label: str, model: Path, benchmark, out: Path, pool, rollout) -> Path:
    """Play every question with checkpoint ``model`` (greedy ``rollout``) on ``pool``, whose engine
    already holds ``model``'s weights, and write ``out/<label>.jsonl``."""
    from longvideo_r1.eval.evaluate import PolicySpec, episode_record

    path = out / f"{label}.jsonl"
    t0 = time.perf_counter()
    episodes = pool.rollout(benchmark.questions, rollout)
    wall = (time.perf_counter() - t0) / max(1, len(episodes))
    policy = PolicySpec(label, f"checkpoint:{model}")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for e in episodes:
            f.write(json.dumps(episode_record(e.episode, policy, benchmark.tasks_of(e.question), wall)) + "\n")
    tmp.replace(path)
    return path


def evaluate_checkpoints(models: dict[str, Path], benchmark, store: Path, out: Path, config) -> None:
    """Every checkpoint in ``models`` (label -> folder), in order, on a one-worker vLLM pool; a label
    whose result file already covers every question is not replayed. Checkpoints with the same model
    config and tokenizer (:func:`engine_key`) share one engine: the next one's weights are loaded in
    place instead of starting a new engine (on this CPU machine ~10-20 s each)."""
    from longvideo_r1.rollout.workers import RolloutPool, WorkerSpec

    # rl.rollout's engine and token limits, played greedily, one episode per question, to eval.max_rounds
    rollout = config.rl.rollout.greedy(max_rounds=config.eval.max_rounds, seed=0)
    qids = {q.qid for q in benchmark.questions}
    pool, key = None, None
    try:
        for version, (label, model) in enumerate(models.items(), start=1):
            if _done(out / f"{label}.jsonl", qids):
                continue
            this = engine_key(model)
            if pool is not None and this is not None and this == key:
                pool.load_weights(str(model), version)
            else:
                if pool is not None:
                    pool.shutdown()
                pool = RolloutPool(WorkerSpec(model=str(model), store=str(store), rollout=rollout, num_cpus=1.0),
                                   num_workers=1)
                key = this
            evaluate_checkpoint(label, model, benchmark, out, pool, rollout)
    finally:
        if pool is not None:
            pool.shutdown()


def evaluate_stage(config, corpus_dir: Path, store: Path, models: dict[str, Path], out: Path, run=None) -> dict:
    from longvideo_r1.corpus.annotations import load_benchmark
    from longvideo_r1.eval.report import write_report
    from longvideo_r1.eval.evaluate import EvalConfig, PolicySpec, run_eval

    out.mkdir(parents=True, exist_ok=True)
    try:
        benchmark = load_benchmark(corpus_dir / "questions.jsonl", "lvr1", split=config.eval.split)
    except InputError as exc:
        raise InputError(f"evaluation split {config.eval.split!r}: {exc}") from None
    evaluate_checkpoints(models, benchmark, store, out, config)
    if config.eval.baselines:
        run_eval(benchmark, store, [PolicySpec(b, b) for b in config.eval.baselines], out,
                 EvalConfig(max_rounds=config.eval.max_rounds, progress=False, video_qa=config.rl.rollout.video_qa,
                            video_qa_options=dict(config.rl.rollout.video_qa_options)))
    report = write_report(out, out)
    if run is not None:
        for label, metrics in report.get("metrics", {}).items():
            run.log_metrics({f"{label}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        for key in ("report", "plots"):
            paths = report.get(key)
            for p in ([paths] if isinstance(paths, (str, Path)) else list((paths or {}).values())
                      if isinstance(paths, dict) else list(paths or [])):
                run.log_artifact(str(p), "eval")
    return {"report": str(out / "report.md"), "metrics": report.get("metrics", {})}
