"""The ``lvr1`` command line.

Every subcommand maps onto one function of a lower room. Errors caused by input are printed as
one line (``lvr1: error: …``) with exit status 2; nothing the user typed ends in a traceback.

Standard output carries results only (JSON, tables, YAML). While a command runs, everything else
that would print on stdout (``print`` in library code, loggers bound to ``sys.stdout`` such as
DeepSpeed's and vLLM's, C code and child processes writing to file descriptor 1) goes to stderr;
a handler writes its results to ``args.stdout``, the real standard output kept aside by
:func:`main`. Logs go to stderr at the level of ``-v`` / ``--log-level`` (else ``LVR1_LOG_LEVEL``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

from longvideo_r1 import __version__
from longvideo_r1.errors import InputError


CAPTIONER_HELP = ("openai: a vision-language model behind an OpenAI-compatible endpoint, the only captioner that "
                  "says what happens and who and what is seen (real captions need it); offline: CPU signals only "
                  "(on-screen text, speech, subtitles, cuts, brightness, motion); demo: the generated demo world "
                  "only (default offline)")


def _cmd_corpus_demo(args) -> int:
    from longvideo_r1.corpus.demo import generate_demo_corpus

    summary = generate_demo_corpus(args.out, videos=args.videos, minutes=args.minutes, seed=args.seed,
                                   dense_train=args.dense_train)
    print(json.dumps(summary, indent=1), file=args.stdout)
    return 0


def _corpus_check_inputs(args) -> dict | None:
    """Videos, annotations, format and split spec from --config/--set and the flags (flags win); None
    when the config's corpus is the generated demo and no flag names a folder."""
    inputs = {"videos": None, "annotations": None, "format": "auto", "splits": None}
    if args.config or args.set:
        from longvideo_r1.platform.config import load_config

        corpus = load_config(args.config, args.set).corpus
        if corpus.source != "folder" and not (args.videos or args.annotations):
            return None
        inputs.update(videos=corpus.path, annotations=corpus.annotations, format=corpus.format,
                      splits=corpus.splits)
    for key in ("videos", "annotations", "format"):
        if getattr(args, key) is not None:
            inputs[key] = getattr(args, key)
    flags = {k: getattr(args, k) for k in ("val", "test", "seed") if getattr(args, k) is not None}
    if flags:
        from longvideo_r1.corpus.check import split_spec

        inputs["splits"] = {**split_spec(inputs["splits"]), **flags}
    if not inputs["videos"] or not inputs["annotations"]:
        raise InputError("lvr1 corpus check: give --videos DIR --annotations FILE, or --config FILE whose corpus "
                         "has source: folder, path and annotations")
    return inputs


def _print_check(report, out) -> None:
    s = report.summary()
    print(f"annotations: {s['annotations']} ({s['format']}, {s['rows']} rows); videos: {s['videos_dir']}", file=out)
    hours = f", {s['hours']:.2f} hours" if s["hours"] is not None else ""
    unused = f"; {s['videos_without_questions']} videos in the folder have no question" \
        if s["videos_without_questions"] else ""
    print(f"videos: {s['videos']}{hours}{unused}", file=out)
    per_split = ", ".join(f"{k} {v} ({s['videos_per_split'][k]} video{'s' * (s['videos_per_split'][k] != 1)})"
                          for k, v in s["questions_per_split"].items())
    source = {"rows": "the split of each row", "splits.json": "splits.json beside the annotations",
              "spec": "--val/--test/--seed"}[s["split_source"]]
    print(f"questions: {s['questions']}" + (f": {per_split}; splits by video from {source}" if per_split else ""),
          file=out)
    if s["questions_per_task"]:
        print("per task type: " + ", ".join(f"{k} {v}" for k, v in s["questions_per_task"].items()), file=out)
    print(f"with clue intervals: {100 * s['with_clue_intervals']:.1f}% of the questions", file=out)
    if report.problems:
        print(f"problems: {len(report.problems)} (those questions are left out)", file=out)
        for problem in report.problems:
            print(problem.line(), file=out)
    else:
        print("problems: none", file=out)


def _cmd_corpus_check(args) -> int:
    from longvideo_r1.corpus.check import check_corpus, clean_targets, write_clean

    inputs = _corpus_check_inputs(args)
    if inputs is None:
        message = "corpus.source is demo: the demo corpus is generated, there is nothing to check"
        print(json.dumps({"source": "demo", "checked": False}) if args.json else message, file=args.stdout)
        return 0
    if args.drop_invalid:
        clean_targets(inputs["annotations"], args.drop_invalid)      # a wrong OUT fails before the check runs
    report = check_corpus(inputs["videos"], inputs["annotations"], inputs["format"], inputs["splits"],
                          probe=not args.no_probe)
    cleaned = write_clean(report, inputs["annotations"], args.drop_invalid) if args.drop_invalid else None
    if args.json:
        result = report.to_json()
        if cleaned is not None:
            result["drop_invalid"] = cleaned
        print(json.dumps(result, ensure_ascii=False), file=args.stdout)
    else:
        _print_check(report, args.stdout)
        if cleaned is not None:
            print(f"wrote {cleaned['out']}: kept {cleaned['kept']} questions, dropped {cleaned['dropped']}"
                  + (f"; splits in {cleaned['splits']}" if "splits" in cleaned else ""), file=args.stdout)
    return 0 if report.ok else 1


def _captioner_options(args) -> dict:
    if args.captioner != "openai":
        return {}
    if not args.endpoint or not args.model:
        raise InputError("--captioner openai needs --endpoint URL and --model NAME "
                         "(e.g. --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct)")
    options = {"endpoint": args.endpoint, "model": args.model, "concurrency": args.concurrency}
    for flag, option in (("concurrency_per_endpoint", "concurrency_per_endpoint"), ("max_retries", "retries"),
                         ("request_timeout", "timeout"), ("retry_backoff", "backoff")):
        if getattr(args, flag, None) is not None:   # `captions build` has these flags, `ask` does not
            options[option] = getattr(args, flag)
    return options


def _cmd_captions_build(args) -> int:
    from longvideo_r1.corpus.build import build_store

    address = args.ray_address or ("auto" if os.environ.get("RAY_ADDRESS") else None)
    report = build_store(args.videos, args.out, args.captioner, _captioner_options(args), args.shards,
                         args.workers, ray_address=address)
    for video_id, message in sorted(report.failed.items()):
        print(f"lvr1: error: {message}", file=sys.stderr)
    print(json.dumps({"store": args.out, "built": len(report.built), "skipped": len(report.skipped),
                      "failed": sorted(report.failed), "seconds": round(report.seconds, 1),
                      "segments": report.segments, "executor": report.executor, "requests": report.requests}),
          file=args.stdout)
    return 1 if report.failed else 0


def _cmd_captions_import(args) -> int:
    from longvideo_r1.corpus.upstream import import_upstream

    report = import_upstream(args.upstream_json, args.out, args.videos, args.shards)
    for message in report["failed"].values():
        print(f"lvr1: error: {message}", file=sys.stderr)
    print(json.dumps({"store": args.out, "imported": len(report["imported"]), "skipped": len(report["skipped"]),
                      "failed": sorted(report["failed"])}), file=args.stdout)
    return 1 if report["failed"] else 0


def _cmd_captions_export(args) -> int:
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.corpus.upstream import export_upstream

    text = json.dumps(export_upstream(CaptionStore(args.store), args.video_id), ensure_ascii=False)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        print(text, file=args.stdout)
    return 0


def _parse_ids(raw: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in raw)
    except ValueError:
        raise InputError(f"segment ids {' '.join(raw)}: give 1 to 3 integers, e.g. `2 3` for (2, 3)") from None


def _cmd_captions_get(args) -> int:
    from longvideo_r1.corpus.store import CaptionStore

    caption = CaptionStore(args.store).get(args.video_id, _parse_ids(args.ids))
    print(json.dumps(caption.to_json(), ensure_ascii=False), file=args.stdout)
    return 0


def _cmd_captions_stats(args) -> int:
    from longvideo_r1.corpus.store import CaptionStore

    print(json.dumps(CaptionStore(args.store).stats(), indent=1), file=args.stdout)
    return 0


def _fit_on(args) -> tuple:
    """(corpus folder or None, caption store) named by --fit-on (and --corpus)."""
    from pathlib import Path

    root = Path(args.fit_on)
    corpus = Path(args.corpus) if args.corpus else None
    if (root / "manifest.json").is_file():
        store = root
    elif (root / "store" / "manifest.json").is_file():
        store = root / "store"
        corpus = corpus or root / "corpus"
    else:
        raise InputError(f"--fit-on {root}: neither a caption store (with manifest.json) nor a pipeline run folder "
                         "(with store/manifest.json and corpus/questions.jsonl), so there is no corpus text to fit "
                         "fitted-qwen3's tokenizer on; run the pipeline to its captions stage (`lvr1 pipeline "
                         "--config FILE --until captions`) or give such a folder")
    if corpus is not None and not (corpus / "questions.jsonl").is_file():
        raise InputError(f"corpus {corpus}: no questions.jsonl, so there is no question text to fit fitted-qwen3's "
                         "tokenizer on; give --corpus CORPUS_DIR (a pipeline run's OUTPUT_DIR/corpus)")
    if corpus is None:
        print(f"lvr1: note: --fit-on {root} is a caption store and no --corpus was given: fitted-qwen3's tokenizer "
              "is fitted to the captions and protocol strings only (no questions, no teacher turns)",
              file=sys.stderr, flush=True)
    return corpus, store


def _cmd_models_prepare(args) -> int:
    import dataclasses

    from longvideo_r1.models import (FITTED_MODEL_NAMES, FITTED_QWEN3, MODEL_NAMES, FittedQwen3Config,
                                     check_fitted_options, make_fitted_qwen3, prepare_models)

    names = list(dict.fromkeys(args.only or (MODEL_NAMES + (FITTED_MODEL_NAMES if args.fit_on else ()))))
    unknown = [name for name in names if name not in MODEL_NAMES + FITTED_MODEL_NAMES]
    if unknown:
        raise InputError(f"unknown model {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join(MODEL_NAMES + FITTED_MODEL_NAMES)}")
    keys = [f.name for f in dataclasses.fields(FittedQwen3Config)]      # one flag per model_options key
    shape = {key: getattr(args, key) for key in keys if getattr(args, key) is not None}
    fitted = FITTED_QWEN3 in names
    if fitted and not args.fit_on:
        raise InputError("fitted-qwen3 is fitted to a corpus: give --fit-on RUN_DIR (a pipeline run folder, with "
                         "corpus/ and store/) or --fit-on STORE_DIR [--corpus CORPUS_DIR]")
    if not fitted and (args.fit_on or args.corpus or shape):
        given = ["--" + k.replace("_", "-") for k in ("fit_on", "corpus") if getattr(args, k)]
        given += ["--" + k.replace("_", "-") for k in shape]
        raise InputError(f"{', '.join(given)}: only fitted-qwen3 is fitted or shaped; add it: --only fitted-qwen3")
    options = dataclasses.replace(FittedQwen3Config(), **shape)
    check_fitted_options(options, lambda key: "--" + key.replace("_", "-"))
    corpus, store = _fit_on(args) if fitted else (None, None)      # refused before anything is built
    paths = {}
    packaged = [name for name in names if name != FITTED_QWEN3]
    # transformers imports accelerate, which imports DeepSpeed, whose logger prints "Setting
    # accelerator to CPU" on stdout: main() has sent stdout to stderr, results go to args.stdout.
    if packaged:
        paths.update(prepare_models(args.out, packaged))
    if fitted:
        from pathlib import Path

        from longvideo_r1.trainer.fitting_text import corpus_texts

        paths[FITTED_QWEN3] = make_fitted_qwen3(Path(args.out) / FITTED_QWEN3, corpus_texts(corpus, store),
                                                options).resolve()
    print(json.dumps({name: str(path) for name, path in paths.items()}, indent=1), file=args.stdout)
    return 0


def _print_summary(args, result) -> None:
    print(json.dumps(result, indent=1, default=str), file=args.stdout)


def _cmd_pipeline(args) -> int:
    from longvideo_r1.platform.config import load_config
    from longvideo_r1.platform.pipeline import run_pipeline

    _print_summary(args, run_pipeline(load_config(args.config, args.set), until=args.until))
    return 0


def _plain_yaml(value):
    """A config value as YAML's safe dumper takes it (tuples as lists, paths as strings)."""
    from pathlib import PurePath

    if isinstance(value, dict):
        return {str(k): _plain_yaml(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_yaml(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def _cmd_config(args) -> int:
    import yaml

    from longvideo_r1.platform.config import load_config, to_dict

    config = load_config(args.config, args.set)
    args.stdout.write(yaml.safe_dump(_plain_yaml(to_dict(config)), sort_keys=False, allow_unicode=True,
                                     default_flow_style=False, width=100))
    return 0


def _cmd_train(args) -> int:
    from longvideo_r1.platform.config import load_config
    from longvideo_r1.platform.pipeline import run_pipeline

    config = load_config(args.config, args.set)
    # --no-resume redoes this stage from scratch (and so the stages after it); earlier ones are kept
    _print_summary(args, run_pipeline(config, until=args.stage, redo=() if args.resume else (args.stage,)))
    return 0


def _cmd_ask(args) -> int:
    from longvideo_r1.platform.ask import ask, parse_clues, print_episode

    captioner_options = _captioner_options(args)
    video_qa_options = {}
    if args.video_qa == "openai":
        if not args.video_qa_endpoint or not args.video_qa_model:
            raise InputError("--video-qa openai needs --video-qa-endpoint URL and --video-qa-model NAME")
        video_qa_options = {"endpoint": args.video_qa_endpoint, "model": args.video_qa_model}
    episode = ask(args.video, args.question, args.options, args.store, args.policy, args.video_qa,
                  video_qa_options, args.captioner, captioner_options, args.max_rounds, args.answer,
                  parse_clues(args.clue), trace_json=args.trace_json, timeline_png=args.timeline_png)
    print_episode(episode, out=args.stdout)
    return 0


def _cmd_data(args) -> int:
    from longvideo_r1.agent.protocol import load_system_template
    from longvideo_r1.trainer import rl_data, sft_data

    template = load_system_template(args.system_template)
    if args.data_command == "rl":
        print(json.dumps(rl_data.generate_rl(args.corpus, args.store, args.out, args.split, args.data_source,
                                          args.max_rounds, template)), file=args.stdout)
        return 0
    from longvideo_r1.agent.teacher import HintConfig, make_teacher

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise InputError(f"--api-key-env {args.api_key_env}: that environment variable is not set; export "
                             "the API key in it or leave the option out")
    teacher = make_teacher(args.teacher, args.endpoint, args.model, api_key, HintConfig(args.hints))
    video_qa = None
    if args.video_qa != "none":
        options = {}
        if args.video_qa == "openai":
            if not args.video_qa_endpoint or not args.video_qa_model:
                raise InputError("--video-qa openai needs --video-qa-endpoint URL and --video-qa-model NAME")
            options = {"endpoint": args.video_qa_endpoint, "model": args.video_qa_model}
        video_qa = (args.video_qa, options)         # each worker builds its own backend
    summary = sft_data.generate_sft(args.corpus, args.store, teacher, args.out, args.split, args.max_rounds,
                                    args.keep_wrong, video_qa, template, args.sharegpt,
                                    concurrency=args.concurrency, price_per_input_token=args.price_per_input_token,
                                    price_per_output_token=args.price_per_output_token)
    print(json.dumps(summary), file=args.stdout)
    return 1 if summary["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lvr1", description="LongVideo-R1 platform: long-video navigation "
                                     "agents trained with RL on Ray, vLLM and DeepSpeed.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pipeline", help="run the main job (demo corpus -> caption store -> …) from a config; "
                       "prints a JSON summary")
    add_config_arguments(p)
    p.add_argument("--until", choices=["corpus", "captions", "model", "sft_data", "sft", "rl_data", "rl", "eval"],
                   help="stop after this stage (default: run them all)")
    p.set_defaults(func=_cmd_pipeline)

    p = sub.add_parser("train", help="train one stage (sft or rl) of a config's pipeline; the stages before "
                       "it run (or are skipped) first")
    p.add_argument("stage", choices=["sft", "rl"])
    add_config_arguments(p)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the stage's last checkpoint (default); --no-resume starts it afresh")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("config", help="print the resolved config (defaults, then each --config file, then each "
                       "--set) as YAML", description="Print the config a `lvr1 pipeline` with the same --config and "
                       "--set options would run, as YAML (a valid config file). Unknown keys, wrongly typed values "
                       "and contradictions are errors naming the key (exit 2).")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("ask", help="answer one question about one video and show how the agent found it")
    p.add_argument("--video", required=True, help="video file (an .srt beside it is used)")
    p.add_argument("--question", required=True)
    p.add_argument("--options", nargs="+", metavar="OPTION", help="answer options, in order A, B, C, …")
    p.add_argument("--store", default="lvr1-store", help="caption store; the video is captioned into it if "
                   "missing (default ./lvr1-store)")
    p.add_argument("--policy", default="retrieval", help="exhaustive, random, retrieval, oracle (needs --clue "
                   "and --answer), openai:MODEL@URL or local:MODEL_DIR (default retrieval)")
    p.add_argument("--video-qa", choices=["demo", "offline", "openai", "none"], default="offline",
                   help="video_qa backend: openai (a vision-language model), offline (CPU: on-screen text, speech, "
                   "subtitles, cuts), demo (the generated demo world only) or none (default offline)")
    p.add_argument("--video-qa-endpoint", help="OpenAI-compatible base URL of the vision-language model")
    p.add_argument("--video-qa-model", help="model name at --video-qa-endpoint")
    p.add_argument("--captioner", choices=["demo", "offline", "openai"], default="offline",
                   help="captioner for a video not yet in the store; " + CAPTIONER_HELP)
    p.add_argument("--endpoint", help="captioner endpoint (--captioner openai)")
    p.add_argument("--model", help="captioner model (--captioner openai)")
    p.add_argument("--concurrency", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("--max-rounds", type=int, default=30)
    p.add_argument("--answer", help="the ground-truth letter, if known (scores the episode)")
    p.add_argument("--clue", action="append", metavar="START-END", help="a clue interval in seconds (repeatable)")
    p.add_argument("--trace-json", help="write the full episode trace to this JSON file")
    p.add_argument("--timeline-png", help="draw the visited segments against the video's length to this PNG")
    p.set_defaults(func=_cmd_ask)

    corpus = sub.add_parser("corpus", help="video corpora").add_subparsers(dest="corpus_command", required=True)
    p = corpus.add_parser("demo", help="generate the embedded demo corpus (videos, subtitles, questions)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--videos", type=int, default=8, help="number of videos (default 8)")
    p.add_argument("--minutes", type=float, default=None,
                   help="about this many minutes per video (default: 20-60 minutes each)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--dense-train", action="store_true",
                   help="a question for every sign of the train videos (2-3x the training questions)")
    p.set_defaults(func=_cmd_corpus_demo)

    p = corpus.add_parser("check", help="read every annotation row and probe every video before training; list "
                          "every problem (exit 1 if any)", description="Check a folder of videos and an annotation "
                          "file (lvr1, CG-Bench, LVBench, Video-MME or MLVU; JSON, JSON lines or Parquet): missing or "
                          "undecodable videos, videos too short for the caption tree, clue intervals outside the "
                          "video, bad options or answers, duplicate question ids, unsafe video ids, missing fields, "
                          "splits that put a video in two splits. Prints a summary and one line per problem (WHERE: "
                          "qid Q: field F: message); exits 1 when there is a problem, 0 otherwise.")
    add_config_arguments(p)
    p.add_argument("--videos", metavar="DIR", help="folder of video files (the id of a video is its file name "
                   "without extension; NAME.srt beside it is its subtitles); default: the config's corpus.path")
    p.add_argument("--annotations", metavar="FILE", help="annotation file (.json, .jsonl, .parquet) or a folder of "
                   "them; default: the config's corpus.annotations")
    p.add_argument("--format", choices=["auto", "lvr1", "demo", "cgbench", "lvbench", "videomme", "mlvu"],
                   help="annotation format (default: the config's corpus.format, else auto: told from the fields)")
    p.add_argument("--val", type=float, help="share of the videos for val when the annotations name no split "
                   "(default 0.1)")
    p.add_argument("--test", type=float, help="share of the videos for test (default 0.1)")
    p.add_argument("--seed", type=int, help="split shuffle seed (default 0)")
    p.add_argument("--no-probe", action="store_true", help="only look for the video files, do not decode them")
    p.add_argument("--json", action="store_true", help="print one JSON object (summary, splits and every problem)")
    p.add_argument("--drop-invalid", metavar="OUT", help="also write the annotations without the questions that "
                   "have a problem to OUT, in the same format")
    p.set_defaults(func=_cmd_corpus_check)

    captions = sub.add_parser("captions", help="caption trees and the caption store").add_subparsers(
        dest="captions_command", required=True)
    p = captions.add_parser("build", help="caption a folder of videos into a sharded store (resumable)")
    p.add_argument("--videos", required=True, help="folder of video files (an .srt beside a video is used)")
    p.add_argument("--out", required=True, help="store folder (created or extended)")
    p.add_argument("--captioner", choices=["demo", "offline", "openai"], default="offline", help=CAPTIONER_HELP)
    p.add_argument("--endpoint", action="append", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1; "
                   "repeat it for several servers of the same model (the requests are shared among them)")
    p.add_argument("--model", help="model name at the endpoint")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight per video (openai)")
    p.add_argument("--concurrency-per-endpoint", type=int, help="requests in flight at one endpoint for the whole "
                   "build (openai; default workers x concurrency)")
    p.add_argument("--max-retries", type=int, help="tries of a failed request after the first, over all endpoints "
                   "(openai; default 4)")
    p.add_argument("--request-timeout", type=float, metavar="SECONDS", help="seconds a request may wait for its "
                   "answer (openai; default 120)")
    p.add_argument("--retry-backoff", type=float, metavar="SECONDS", help="wait before the first retry, doubled at "
                   "each further one up to 8 s (openai; default 0.5)")
    p.add_argument("--shards", type=int, default=None, help="number of shards of a new store (default 16)")
    p.add_argument("--workers", type=int, default=1, help="videos captioned in parallel: local processes, or Ray "
                   "tasks with --ray-address (default 1)")
    p.add_argument("--ray-address", help="caption as Ray tasks on this cluster (auto: the one on this machine; "
                   "default: the Ray job's cluster when run in one, else local processes)")
    p.set_defaults(func=_cmd_captions_build)

    p = captions.add_parser("import", help="import reference one-JSON-per-video captions")
    p.add_argument("--upstream-json", required=True, help="folder of {video_uid}.json files")
    p.add_argument("--out", required=True, help="store folder (created or extended)")
    p.add_argument("--videos", help="folder of the videos, for exact fps and frame counts (optional)")
    p.add_argument("--shards", type=int, default=None)
    p.set_defaults(func=_cmd_captions_import)

    p = captions.add_parser("export", help="write one video's captions in the reference JSON format")
    p.add_argument("store")
    p.add_argument("video_id")
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(func=_cmd_captions_export)

    p = captions.add_parser("get", help="print one caption as JSON: lvr1 captions get STORE VIDEO_ID H [M [L]]")
    p.add_argument("store")
    p.add_argument("video_id")
    p.add_argument("ids", nargs="+", metavar="ID", help="1-based segment ids: H, or H M, or H M L")
    p.set_defaults(func=_cmd_captions_get)

    p = captions.add_parser("stats", help="counts per level and per shard")
    p.add_argument("store")
    p.set_defaults(func=_cmd_captions_stats)

    models = sub.add_parser("models", help="small real language models built offline from installed packages"
                            ).add_subparsers(dest="models_command", required=True)
    p = models.add_parser("prepare", help="build tiny-qwen3 (random weights, real Qwen3 tokenizer), "
                          "smollm2 (SmolLM2-135M-Instruct from its GGUF) and, with --fit-on, fitted-qwen3 "
                          "(random weights, a byte-level BPE tokenizer fitted to a corpus's text) as safetensors "
                          "folders; print their paths as JSON (a finished folder is skipped)")
    p.add_argument("--out", default="models", help="parent folder; each model goes to OUT/NAME (default ./models)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="build only these: tiny-qwen3, smollm2, fitted-qwen3 (default tiny-qwen3 and smollm2, "
                        "and fitted-qwen3 when --fit-on is given)")
    p.add_argument("--fit-on", metavar="DIR", help="fitted-qwen3: the text to fit its tokenizer on: a pipeline run "
                   "folder (OUTPUT_DIR, holding corpus/ and store/) or a caption store folder")
    p.add_argument("--corpus", metavar="DIR", help="fitted-qwen3: the corpus folder (questions.jsonl) when --fit-on "
                   "is a caption store (default: --fit-on's corpus/ for a run folder)")
    from longvideo_r1.models import FittedQwen3Config       # cheap: models imports torch only when building

    for key, default in vars(FittedQwen3Config()).items():
        p.add_argument("--" + key.replace("_", "-"), type=int, metavar="N",
                       help=f"fitted-qwen3 {key} (default {default}; as the config's model_options.{key})")
    p.set_defaults(func=_cmd_models_prepare)

    data = sub.add_parser("data", help="training data: SFT trajectories from a teacher, verl RL rows").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("sft", help="play a teacher on every question of a split and write the trajectories "
                        "as JSON lines (resumable: questions already in --out are skipped)")
    p.add_argument("--corpus", required=True, help="corpus folder (questions.jsonl, splits.json, videos/)")
    p.add_argument("--store", required=True, help="caption store holding the corpus videos")
    p.add_argument("--teacher", choices=["oracle", "openai"], default="oracle",
                   help="oracle (walks to the clues, truth answers) or openai (a chat model, hinted after a "
                   "wrong answer; needs --endpoint and --model) (default oracle)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL of the teacher model (--teacher openai)")
    p.add_argument("--model", help="teacher model name at --endpoint")
    p.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the teacher's API key "
                   "(default: OPENAI_API_KEY if set)")
    p.add_argument("--split", default="train", help="corpus split (default train)")
    p.add_argument("--max-rounds", type=int, default=15, help="rounds per episode, as in RL rollouts (default 15)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="questions played at once (default 1); above 1 they run on Ray actors")
    p.add_argument("--keep-wrong", action="store_true",
                   help="also keep trajectories that end wrong, unanswered or mention a hint")
    p.add_argument("--hints", metavar="KIND,…",
                   help="hints after each wrong or missing answer, in turn (default high,medium,low,video_qa: the "
                   "high, medium, then low segments holding the clue, then use video_qa there; then it gives up; "
                   "kinds: high, medium, low, video_qa, retry)")
    p.add_argument("--price-per-input-token", type=float, metavar="USD",
                   help="the teacher's price per prompt token, to report the cost (with --price-per-output-token)")
    p.add_argument("--price-per-output-token", type=float, metavar="USD", help="price per completion token")
    p.add_argument("--video-qa", choices=["demo", "offline", "openai", "none"], default="demo",
                   help="video_qa backend of the episodes: openai (a vision-language model), offline (CPU: "
                   "on-screen text, speech, subtitles, cuts), demo (the generated demo world only) or none "
                   "(default demo)")
    p.add_argument("--video-qa-endpoint", help="OpenAI-compatible base URL of the vision-language model")
    p.add_argument("--video-qa-model", help="model name at --video-qa-endpoint")
    p.add_argument("--system-template", help="system prompt template file with {width} (default: ours)")
    p.add_argument("--out", required=True, help="JSONL file of trajectories (appended to)")
    p.add_argument("--sharegpt", help="also write LLaMA-Factory sharegpt JSON here, with dataset_info.json beside it")
    p.set_defaults(func=_cmd_data)

    p = data.add_parser("rl", help="write one verl RL row per question of a split (Parquet)")
    p.add_argument("--corpus", required=True, help="corpus folder (questions.jsonl, splits.json, videos/)")
    p.add_argument("--store", required=True, help="caption store holding the corpus videos")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--split", default="train", help="corpus split (default train)")
    p.add_argument("--data-source", help="data_source of every row (default: each question's own, lvr1_demo "
                   "for the demo corpus)")
    p.add_argument("--max-rounds", type=int, default=15, help="round limit named in the system prompt (default 15)")
    p.add_argument("--system-template", help="system prompt template file with {width} (default: ours)")
    p.set_defaults(func=_cmd_data)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    for each in _all_parsers(parser):
        _add_log_options(each, top=each is parser)
    return parser


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` (repeatable, later files win key by key) and ``--set KEY=VALUE`` (repeatable,
    applied last), as `lvr1 pipeline`, `train`, `config` and `submit` take them."""
    p.add_argument("--config", action="append", metavar="FILE",
                   help="YAML config (e.g. configs/demo-cpu.yaml); repeatable: later files override earlier ones "
                   "key by key (defaults if omitted)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key after the files, e.g. --set corpus.videos=2 (repeatable)")


def _all_parsers(parser: argparse.ArgumentParser):
    """``parser`` and every parser below it (the subcommands, their subcommands, …)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):   # aliases share one parser
                yield from _all_parsers(child)


def _add_log_options(p: argparse.ArgumentParser, top: bool) -> None:
    """``-v`` and ``--log-level``, taken before or after the subcommand (``lvr1 -v pipeline`` and
    ``lvr1 pipeline -v`` alike); a subcommand's parser leaves the value alone unless given there."""
    from longvideo_r1.logs import LEVELS

    group = p.add_argument_group("logging") if top else p
    group.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG",
                       default=None if top else argparse.SUPPRESS,
                       help="log at DEBUG level (same as --log-level DEBUG)")
    group.add_argument("--log-level", dest="log_level", type=str.upper, choices=LEVELS, metavar="LEVEL",
                       default=None if top else argparse.SUPPRESS,
                       help=f"log level on stderr: {', '.join(LEVELS)} (default: $LVR1_LOG_LEVEL, else INFO)")


# Subcommand groups that live in their own room: each module defines ``add_commands(sub)`` (adding
# parsers with ``set_defaults(func=handler)``) and keeps its top-level imports light.
COMMAND_MODULES: tuple[str, ...] = (
    "longvideo_r1.platform.compare_runs",
    "longvideo_r1.cluster.commands",
    "longvideo_r1.eval.commands",
)


class _ResultsOnStdout:
    """While a command runs: the real standard output is kept for results (``self.stream``, handed to
    the command as ``args.stdout``) and everything else that prints on stdout goes to stderr.

    When ``sys.stdout`` is the process's file descriptor 1, the redirection is done on descriptors,
    so C code, child processes and loggers that captured ``sys.stdout`` are moved too; otherwise (a
    caller that replaced ``sys.stdout``, such as pytest's capsys) the current ``sys.stdout`` object
    takes the results and ``sys.stdout`` points at ``sys.stderr`` meanwhile.
    """

    def __enter__(self):
        from longvideo_r1.logs import send_library_logs_to_stderr

        self.saved = sys.stdout
        self.fd: int | None = None
        with contextlib.suppress(Exception):
            self.saved.flush()
        try:
            on_fd1 = self.saved.fileno() == 1
        except (AttributeError, OSError, ValueError):
            on_fd1 = False
        if on_fd1:
            sys.stderr.flush()
            self.fd = os.dup(1)
            self.stream = open(self.fd, "w", encoding=self.saved.encoding, errors=self.saved.errors,
                               closefd=False)
            os.dup2(2, 1)
        else:
            self.stream = self.saved
        sys.stdout = sys.stderr
        send_library_logs_to_stderr(self.saved)      # loggers that captured stdout before main() ran
        return self.stream

    def broken_pipe(self) -> None:
        """The reader of stdout went away: drop the rest of the results quietly."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self.fd if self.fd is not None else self.saved.fileno())
        os.close(devnull)

    def __exit__(self, *exc) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.broken_pipe()
            with contextlib.suppress(Exception):
                self.stream.flush()
        except (OSError, ValueError):
            pass
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stdout = self.saved
        if self.fd is not None:
            os.dup2(self.fd, 1)
            os.close(self.fd)


def main(argv: list[str] | None = None) -> int:
    from longvideo_r1.logs import setup_logging

    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log_level, sys.stderr, export=args.log_level is not None)
    except InputError as exc:                       # a bad LVR1_LOG_LEVEL
        print(f"lvr1: error: {exc}", file=sys.stderr)
        return 2
    results = _ResultsOnStdout()
    with results as args.stdout:
        try:
            return args.func(args)
        except InputError as exc:
            print(f"lvr1: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("lvr1: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            results.broken_pipe()
            return 1


if __name__ == "__main__":
    sys.exit(main())
