"""``lvr1 eval``: several navigators side by side on a benchmark, resumable, with a report."""

from __future__ import annotations

import json
import sys

from longvideo_r1.errors import InputError


def _from_config(args):
    """What a pipeline config says to evaluate: its corpus's eval split, its caption store, its trained
    checkpoints (``local:``) and baselines unless --policy names others, its round limit and video_qa."""
    from pathlib import Path

    from longvideo_r1.corpus.annotations import load_benchmark
    from longvideo_r1.eval.evaluate import EvalConfig, parse_policy
    from longvideo_r1.platform.config import load_config

    config = load_config(args.config, args.set)
    root = Path(config.output_dir)
    corpus, store = root / "corpus" / "questions.jsonl", root / "store"
    if not corpus.is_file() or not (store / "manifest.json").is_file():
        raise InputError(f"lvr1 eval --config: {root} has no corpus and caption store yet; build them with "
                         f"`lvr1 pipeline --config … --until captions` (or the whole pipeline) first")
    benchmark = load_benchmark(corpus, "lvr1", args.split or config.eval.split)
    if args.policy:
        policies = [parse_policy(p) for p in args.policy]
    else:
        trained = [(label, root / stage / "model") for label, stage in (("sft", "sft"), (config.rl.algorithm, "rl"))
                   if (root / stage / "model" / "config.json").is_file()]
        policies = [parse_policy(f"{label}=local:{path}") for label, path in trained] + \
                   [parse_policy(b) for b in config.eval.baselines]
        if not policies:
            raise InputError(f"lvr1 eval --config: no trained model under {root} and no eval.baselines; "
                             "give --policy SPEC")
    r = config.rl.rollout
    eval_config = EvalConfig(max_rounds=config.eval.max_rounds, workers=args.workers, limit=args.limit,
                             video_qa=r.video_qa, video_qa_options=dict(r.video_qa_options))
    return benchmark, store, policies, eval_config, args.out or str(root / "eval_cli")


def _cmd_eval(args) -> int:
    from longvideo_r1.corpus.annotations import load_benchmark
    from longvideo_r1.eval.report import write_report
    from longvideo_r1.eval.evaluate import EvalConfig, parse_policy, run_eval

    if args.config:
        benchmark, store, policies, config, out = _from_config(args)
    else:
        if not args.benchmark or not args.store or not args.policy:
            raise InputError("lvr1 eval: give --config FILE (the pipeline's corpus, store and models), or "
                             "--benchmark FILE --store DIR --policy SPEC")
        benchmark = load_benchmark(args.benchmark, args.format, args.split)
        store = args.store
        policies = [parse_policy(p) for p in args.policy]
        video_qa_options = {}
        if args.video_qa == "openai":
            video_qa_options = {"endpoint": args.video_qa_endpoint, "model": args.video_qa_model}
        config = EvalConfig(max_rounds=args.max_rounds, workers=args.workers, limit=args.limit,
                            video_qa=args.video_qa, video_qa_options=video_qa_options)
        out = args.out or f"runs/eval/{benchmark.name}"
    # Standard output carries the summary only: `lvr1` (main) sends what libraries print there (DeepSpeed
    # when a local model loads) to stderr while the command runs, and hands the real stdout as args.stdout.
    summary = run_eval(benchmark, store, policies, out, config)
    if not args.no_report:
        report = write_report(out)
        summary["report"] = str(report["report"])
        summary["plots"] = {k: str(v) for k, v in report["plots"].items()}
    text = json.dumps(summary) if args.json else json.dumps(summary, indent=1)
    print(text, file=getattr(args, "stdout", None) or sys.stdout)
    return 1 if summary["failed"] else 0


def add_commands(sub) -> None:
    from longvideo_r1.agent.episode import EpisodeConfig

    p = sub.add_parser(
        "eval", help="evaluate navigators on a benchmark (LVBench, Video-MME, MLVU, CG-Bench, demo): accuracy, "
        "cost, localisation; resumable; writes report.md and plots",
        description="Play every question of a benchmark with each --policy (episodes on --workers threads) and "
        "append one JSON line per finished question to OUT/<label>.jsonl; a rerun plays only the questions "
        "not yet there. Then write OUT/report.md and PNG plots. Prints a JSON summary.")
    p.add_argument("--config", action="append", metavar="FILE",
                   help="a pipeline config: evaluate its corpus's eval split (eval.split) on its caption store with "
                   "its trained checkpoints and eval.baselines (or --policy), its eval.max_rounds and "
                   "rl.rollout.video_qa; results in OUTPUT_DIR/eval_cli (repeatable; later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--policy", action="append", metavar="[LABEL=]SPEC",
                   help="exhaustive, random, retrieval, oracle, openai:MODEL@URL or local:CHECKPOINT_DIR, "
                   "optionally labelled (mine=openai:r1@http://127.0.0.1:8000/v1); repeat for several")
    p.add_argument("--benchmark", metavar="FILE",
                   help="question file (.jsonl, .json, .parquet) or a folder of them (a corpus folder: its "
                   "questions.jsonl)")
    p.add_argument("--store", help="caption store holding every benchmark video")
    p.add_argument("--format", default="auto", help="auto (from the fields), lvr1 (our questions.jsonl; demo is "
                   "the same), cgbench, lvbench, videomme or mlvu (default auto)")
    p.add_argument("--split", help="lvr1: a corpus split (default test; with --config eval.split); videomme: short, medium or long "
                   "(default long); 'all' for every question")
    p.add_argument("--max-rounds", type=int, default=EpisodeConfig.max_rounds,
                   help=f"round limit per episode (default {EpisodeConfig.max_rounds})")
    p.add_argument("--workers", type=int, default=1, help="episodes played at once (default 1)")
    p.add_argument("--out", help="results folder (default runs/eval/<benchmark name>)")
    p.add_argument("--limit", type=int, help="only the first N questions (a later run without it plays the rest)")
    p.add_argument("--video-qa", default="offline", choices=["demo", "offline", "openai", "none"],
                   help="video_qa backend: openai (a vision-language model: real answers), offline (CPU: on-screen "
                   "text, speech, subtitles, cuts only), demo (the generated demo world only) or none (default "
                   "offline)")
    p.add_argument("--video-qa-endpoint", help="OpenAI-compatible base URL of the vision-language model")
    p.add_argument("--video-qa-model", help="model name at --video-qa-endpoint")
    p.add_argument("--no-report", action="store_true", help="write the result files only")
    p.add_argument("--json", action="store_true", help="print the JSON summary on one line (the default prints "
                   "the same object indented); either way stdout holds that one object only")
    p.set_defaults(func=_cmd_eval)
