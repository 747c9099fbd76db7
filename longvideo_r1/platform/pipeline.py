"""The main job, stage by stage, with one rule for "stage done".

    corpus → captions → model → sft_data → sft → rl_data → rl → eval

The rule: every stage records, in ``OUTPUT_DIR/stages.json``, a fingerprint of what it was built from
(the config keys it reads and the fingerprints of the stages it reads) and whether it finished. On a
rerun a stage is

- skipped when its fingerprint is unchanged, it finished and its output is there;
- continued when its fingerprint is unchanged but it did not finish (SFT and RL resume from their
  last checkpoint; the caption store and the SFT data skip the items already written), or when only
  ``rl.steps`` grew (RL continues from its last checkpoint to the new step count);
- redone from scratch when its fingerprint changed (its output is removed first). Since a stage's
  fingerprint holds those of its inputs, everything after a changed stage is redone too: a changed
  ``rl.rollout.max_rounds`` rebuilds the RL rows, then RL, then the evaluation.

Every stage that really runs gets a fresh MLflow run, nested under the pipeline's parent run; a
skipped stage opens none. A stage whose endpoints name a served role (``role:video_qa``) starts that
role's servers first if they are not running (:class:`~longvideo_r1.cluster.served.ServedRoles`) and
runs with their URLs (:func:`with_endpoints`); the fingerprints keep ``role:video_qa`` as written, and
the servers stop when the pipeline ends.

Ctrl-C writes a checkpoint, marks the MLflow runs KILLED and exits; rerunning the same command continues.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from longvideo_r1 import storage
from longvideo_r1.errors import InputError
from longvideo_r1.platform.config import PipelineConfig, to_dict

STAGES = ("corpus", "captions", "model", "sft_data", "sft", "rl_data", "rl", "eval")

RL_CONTINUES = ("steps",)
"""rl keys whose change continues the RL stage instead of redoing it"""
DATA_OPERATIONAL = ("concurrency", "price_per_input_token", "price_per_output_token")
"""data keys that change how fast the teacher runs or what its cost report says, not the trajectories"""
SFT_DATA_KEYS = ("teacher", "played", "kept", "failed", "correct_rate", "mean_rounds", "teacher_calls",
                 "prompt_tokens", "completion_tokens", "teacher_seconds", "cost_usd", "seconds")
"""what the summary keeps of the teacher's run"""
RL_OPERATIONAL = ("val_every", "val_questions", "save_every", "reward_timeout_s", "keep_last", "keep_every",
                  "weight_sync", "weight_sync_backend", "weight_sync_bucket_mb", "weight_sync_timeout_s", "save_hf",
                  "store_access", "rollout_sleep")
"""rl keys that change what is logged or how often it is saved, not what is trained"""
SFT_OPERATIONAL = ("keep_last", "keep_every", "save_hf")
"""sft keys that change which checkpoints stay on disk, not what is trained"""


def _log(stage: str, message: str) -> None:
    print(f"[lvr1 pipeline] {stage}: {message}", file=sys.stderr, flush=True)


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (config sections, other fingerprints)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _section(obj, drop: tuple[str, ...] = ()) -> dict:
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return {k: v for k, v in data.items() if k not in drop}


class StageBook:
    """``stages.json``: per stage its fingerprint, whether it finished, and what it reported."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.records: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self.records = json.loads(self.path.read_text())
            except json.JSONDecodeError:          # a crash mid-write: every stage is checked again
                self.records = {}

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.records, indent=1, default=str))
        tmp.replace(self.path)

    def state(self, stage: str, fp: str, output_ok: bool) -> str:
        """``done``, ``partial`` (same inputs, unfinished: continue) or ``new`` (redo from scratch)."""
        record = self.records.get(stage)
        if record is None or record.get("fingerprint") != fp:
            return "new"
        return "done" if record.get("finished") and output_ok else "partial"

    def start(self, stage: str, fp: str, **extra) -> None:
        self.records[stage] = {"fingerprint": fp, "finished": False, **extra}
        self._write()

    def finish(self, stage: str, **extra) -> None:
        self.records[stage].update(finished=True, finished_at=time.time(), **extra)
        self._write()

    def get(self, stage: str, key: str, default=None):
        return self.records.get(stage, {}).get(key, default)


def _clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ------------------------------------------------------------------------------------- the stages


def corpus_fingerprint(config: PipelineConfig) -> str:
    """What the corpus stage is built from: the corpus keys, and for a folder corpus the annotation
    files' and the video folder's names, sizes and modification times (an edited annotation file or
    an added video redoes the corpus and everything after it)."""
    c = config.corpus
    if c.source == "demo":
        # dense_train off leaves the fingerprint of corpora built before the key existed as it was
        return fingerprint("corpus", _section(c, drop=("path", "annotations", "format", "splits")
                                              + (() if c.dense_train else ("dense_train",))))
    return fingerprint("corpus", _section(c, drop=("videos", "minutes", "seed", "dense_train")),
                       _listing(c.annotations), _listing(c.path))


def _listing(path) -> list:
    if storage.is_uri(path):
        return sorted((name, size) for name, size in storage.listing(str(path)).items())
    path = Path(path)
    if path.is_file():
        return [(path.name, path.stat().st_size, int(path.stat().st_mtime))]
    if not path.is_dir():
        return [str(path)]
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in path.iterdir() if p.is_file())


def corpus_stage(config: PipelineConfig, corpus_dir: Path) -> None:
    """The demo corpus is generated; a folder corpus is checked (every annotation, every video) and,
    when the check finds no problem, written as the corpus folder the later stages read."""
    c = config.corpus
    if c.source == "demo":
        from longvideo_r1.corpus.demo import generate_demo_corpus

        _log("corpus", f"generating {c.videos} demo videos into {corpus_dir}")
        generate_demo_corpus(corpus_dir, videos=c.videos, minutes=c.minutes, seed=c.seed, dense_train=c.dense_train)
        return
    from longvideo_r1.corpus.check import check_corpus, write_corpus

    videos_dir, annotations, uris = _local_sources(c, corpus_dir)
    _log("corpus", f"checking {c.annotations} ({c.format}) against the videos in {c.path}")
    report = check_corpus(videos_dir, annotations, c.format,
                          {"val": c.splits.val, "test": c.splits.test, "seed": c.splits.seed})
    if report.problems:
        shown = "\n".join(f"  {p.where}: qid {p.qid}: {p.field}: {p.message}" for p in report.problems[:20])
        more = f"\n  … and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise InputError(f"corpus {c.annotations}: {len(report.problems)} problem(s), nothing trained:\n{shown}{more}\n"
                         f"See them all with `lvr1 corpus check --config FILE`; fix them, or write a cleaned "
                         "annotation file with `lvr1 corpus check --config FILE --drop-invalid OUT` and point "
                         "corpus.annotations at it")
    if config.data.teacher == "oracle":
        _log("corpus", "warning: data.teacher is oracle on your own corpus: its thinking text is templated and "
                       "its answers are the truth; for real trajectories use data.teacher: openai")
    write_corpus(report, corpus_dir)
    if uris:
        _record_uris(corpus_dir, uris)
    _log("corpus", f"{len(report.videos)} videos, {len(report.questions)} questions, checked in "
                   f"{report.seconds:.1f} s")


def _local_sources(c, corpus_dir: Path) -> tuple[str, str, dict[str, str]]:
    """The video folder and annotations to check, as local paths: a URI source (``s3://…``) is
    fetched into this node's cache and linked from ``corpus_dir/source``; returns ``(videos folder,
    annotations, {cached file: its URI})``."""
    videos_dir, annotations, uris = c.path, c.annotations, {}
    if storage.is_uri(c.path):
        _log("corpus", f"fetching the videos of {c.path} into this node's cache")
        named = storage.mirror_folder(c.path, corpus_dir / "source" / "videos")
        videos_dir = str(corpus_dir / "source" / "videos")
        uris.update({str(storage.local_file(uri).resolve()): uri for uri in named.values()})
    if storage.is_uri(c.annotations):
        if storage.listing(c.annotations).keys() == {""}:        # one file
            annotations = str(storage.local_file(c.annotations))
        else:
            storage.mirror_folder(c.annotations, corpus_dir / "source" / "annotations")
            annotations = str(corpus_dir / "source" / "annotations")
    return videos_dir, annotations, uris


def _record_uris(corpus_dir: Path, uris: dict[str, str]) -> None:
    """Point the corpus's videos (and subtitles) at their URIs: the captioning tasks and video_qa on
    any node then read them from their own cached copies, never from this node's disk."""
    path = corpus_dir / "corpus.json"
    manifest = json.loads(path.read_text())
    for video in manifest["videos"]:
        video["path"] = uris.get(video["path"], video["path"])
        if video.get("subtitles"):
            video["subtitles"] = uris.get(video["subtitles"], video["subtitles"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)


def corpus_videos(corpus_dir: Path) -> list[tuple[str, Path]] | None:
    """``(video_id, path)`` of a folder corpus (its videos stay where they are); None for the demo,
    whose videos are in ``corpus_dir/videos``."""
    manifest = json.loads((corpus_dir / "corpus.json").read_text())
    if manifest.get("source") != "folder":
        return None
    return [(v["video_id"], v["path"] if storage.is_uri(v["path"]) else Path(v["path"])) for v in manifest["videos"]]


def captions_stage(config: PipelineConfig, corpus_dir: Path, store: Path, log_metrics=None) -> None:
    """Caption the corpus into the store: Ray tasks when Ray is there (``ray.address``, a Ray job),
    else local processes; the progress figures go to ``log_metrics`` (the stage's MLflow run)."""
    from longvideo_r1.corpus.build import build_store

    c = config.captions
    options = ({"endpoint": c.endpoints or c.endpoint, "model": c.model, "concurrency": c.concurrency,
                "concurrency_per_endpoint": c.concurrency_per_endpoint, "retries": c.max_retries,
                "timeout": c.request_timeout_s, "backoff": c.retry_backoff_s}
               if c.captioner == "openai" else {})
    _log("captions", f"building caption store {store} with the {c.captioner} captioner")
    report = build_store(corpus_dir / "videos", store, c.captioner, options, c.shards, c.workers,
                         progress=False, videos=corpus_videos(corpus_dir), ray_address=ray_address(config),
                         log_metrics=log_metrics)
    _log("captions", f"built {len(report.built)} ({report.segments} segments, {report.executor}), skipped "
                     f"{len(report.skipped)} already done, in {report.seconds:.1f} s")
    if report.failed:
        raise InputError("caption store: " + "; ".join(report.failed.values()))


def summarize(corpus_dir: Path, store: Path) -> dict:
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.jsonl import json_lines

    path = corpus_dir / "questions.jsonl"
    questions = [q for _, q in json_lines(path.read_text(), str(path), "regenerate the corpus")]
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
    }


def resolve_model(config: PipelineConfig, corpus_dir: Path | None = None, store: Path | None = None) -> Path:
    """The policy's checkpoint folder: a prepared model name (built in ``models_dir``, shared by runs),
    a model fitted to this run's corpus, a local transformers folder, or a model hub id
    (``Qwen/Qwen3-8B``) resolved by ``huggingface_hub.snapshot_download``, which honours
    ``HF_HUB_OFFLINE=1`` (the local cache only) and ``HF_HOME`` / ``HF_HUB_CACHE``.

    ``fitted-qwen3`` is fitted to the text of ``corpus_dir`` and ``store``
    (:func:`~longvideo_r1.trainer.fitting_text.corpus_texts`) with ``model_options`` and built in
    ``OUTPUT_DIR/model/fitted-qwen3``: it belongs to the run, as its corpus does. Its marker holds the
    text's digest, so the folder is rebuilt when the corpus or the captions change and skipped
    otherwise (the text is recomputed each time, in seconds).
    """
    from longvideo_r1.models import (FITTED_MODEL_NAMES, FITTED_QWEN3, MODEL_NAMES, make_fitted_qwen3, marker_params,
                                     prepare_models)

    if config.model in MODEL_NAMES:
        return prepare_models(config.models_dir, [config.model])[config.model]
    if config.model == FITTED_QWEN3:
        if corpus_dir is None or store is None:
            raise InputError(f"model {config.model}: is fitted to a corpus; the pipeline builds it after the "
                             "captions stage (or `lvr1 models prepare --only fitted-qwen3 --fit-on RUN_DIR`)")
        from longvideo_r1.trainer.fitting_text import corpus_texts

        texts = corpus_texts(corpus_dir, store)
        folder = Path(config.output_dir) / "model" / config.model
        before = marker_params(folder, config.model)
        folder = make_fitted_qwen3(folder, texts, config.model_options).resolve()
        vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
        _log("model", f"{config.model} in {folder}: a tokenizer of {vocab} tokens fitted to {len(texts)} texts "
                      f"({sum(map(len, texts)):,} characters) of this run's corpus"
                      + (" (up to date)" if marker_params(folder, config.model) == before else " (built)"))
        return folder
    path = Path(config.model)
    if (path / "config.json").is_file():
        return path
    if path.exists() or not _HUB_ID.fullmatch(config.model):
        raise InputError(f"model {config.model}: neither a prepared model name "
                         f"({', '.join(MODEL_NAMES + FITTED_MODEL_NAMES)}), a transformers checkpoint folder with "
                         "config.json, nor a model hub id like Qwen/Qwen3-8B")
    return hub_snapshot(config.model)


_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def hub_snapshot(repo_id: str) -> Path:
    """The local folder of hub model ``repo_id`` (downloaded unless ``HF_HUB_OFFLINE`` is set)."""
    import os

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    # read the cache location now (huggingface_hub reads it once, at import)
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    try:
        folder = Path(snapshot_download(repo_id, local_files_only=offline, cache_dir=cache))
    except LocalEntryNotFoundError:
        where = cache
        how = ("HF_HUB_OFFLINE is set, so only the local cache is read" if offline
               else "it could not be downloaded either")
        raise InputError(f"model {repo_id}: not in the Hugging Face cache ({where}) and {how}; download it "
                         f"first (`huggingface-cli download {repo_id}` on a machine with network, sharing the "
                         "cache) or set model: to a local checkpoint folder") from None
    except Exception as exc:      # network, authentication, an unknown repository
        raise InputError(f"model {repo_id}: cannot be fetched from the model hub ({str(exc).splitlines()[0][:200]}); "
                         "set model: to a local checkpoint folder, or HF_HUB_OFFLINE=1 to use the cache") from None
    if not (folder / "config.json").is_file():
        raise InputError(f"model {repo_id}: the snapshot {folder} has no config.json; it is not a transformers model")
    return folder


def model_fingerprint(path: Path) -> str:
    """What identifies a checkpoint folder's content: its files' names, sizes and modification times,
    and its absolute path; for a model fitted to a corpus (it lives inside the run folder) the params
    of its marker (the fitting text's digest among them) instead of the path, so a run folder that
    is moved or renamed keeps its SFT and RL stages."""
    from longvideo_r1.models import FITTED_MODEL_NAMES, marker_params

    files = sorted((p.relative_to(path).as_posix(), p.stat().st_size, int(p.stat().st_mtime))
                   for p in path.rglob("*") if p.is_file())
    fitted = [params for name in FITTED_MODEL_NAMES if (params := marker_params(path, name)) is not None]
    return fingerprint(files, *fitted) if fitted else fingerprint(str(path.resolve()), files)


def sft_data_stage(config: PipelineConfig, corpus_dir: Path, store: Path, path: Path) -> dict:
    from longvideo_r1.agent.teacher import make_teacher
    from longvideo_r1.trainer.sft_data import generate_sft

    d = config.data
    teacher = make_teacher(d.teacher, endpoint=d.endpoint, model=d.model)
    video_qa = None if d.video_qa == "none" else (d.video_qa, dict(d.video_qa_options) if d.video_qa == "openai" else {})
    summary = generate_sft(corpus_dir, store, teacher, path, split="train", max_rounds=d.max_rounds,
                           video_qa=video_qa, progress=False, concurrency=d.concurrency,
                           price_per_input_token=d.price_per_input_token,
                           price_per_output_token=d.price_per_output_token)
    if not summary["kept"] and not summary["skipped_existing"]:
        raise InputError(f"sft_data: the {d.teacher} teacher answered none of the {summary.get('played')} training "
                         f"questions correctly ({summary.get('failed')} failed), so there is nothing to train on; "
                         "check the teacher endpoint and model (data.endpoint, data.model) and the captions")
    cost = f", ${summary['cost_usd']:.2f}" if summary.get("cost_usd") is not None else ""
    _log("sft_data", f"{summary['kept']} trajectories of {summary['played']} played in {path} "
                     f"({summary.get('teacher_calls', 0)} teacher calls, {summary.get('prompt_tokens', 0)} + "
                     f"{summary.get('completion_tokens', 0)} tokens{cost})")
    return summary


def rl_data_stage(config: PipelineConfig, corpus_dir: Path, store: Path, data_dir: Path) -> dict:
    from longvideo_r1.trainer.rl_data import generate_rl
    from longvideo_r1.trainer.splits import load_corpus_split

    paths: dict[str, str | None] = {}
    for split in ("train", "val"):
        path = data_dir / f"rl_{split}.parquet"
        try:
            load_corpus_split(corpus_dir, split)
        except InputError:
            if split == "val":
                paths[split] = None
                continue
            raise
        written = generate_rl(corpus_dir, store, path, split=split, max_rounds=config.rl.rollout.max_rounds)
        paths[split] = str(path)
        if split == "train":
            paths["train_rows"] = written["rows"]
    rows = paths["train_rows"]
    epochs = config.rl.steps * config.rl.questions_per_step / max(1, rows)
    _log("rl_data", f"{rows} RL rows in {paths['train']}" + (f" and {paths['val']}" if paths["val"] else "")
         + f"; rl.steps {config.rl.steps} × rl.questions_per_step {config.rl.questions_per_step} = "
           f"{epochs:.2f} epochs of them")
    return paths


def ray_address(config: PipelineConfig) -> str | None:
    """``ray.address``, else ``auto`` inside a Ray job (RAY_ADDRESS is set), else None (no cluster)."""
    import os

    return config.ray.address or ("auto" if os.environ.get("RAY_ADDRESS") else None)


def start_ray(config: PipelineConfig) -> None:
    """Join ``ray.address`` (or the cluster of a Ray job: RAY_ADDRESS), else start a local Ray of
    ``ray.num_cpus`` logical CPUs (default max(4, cores): roles share the cores)."""
    import os

    from longvideo_r1.actors import init_ray

    init_ray(ray_address(config), config.ray.num_cpus or max(4, os.cpu_count() or 1))


def with_endpoints(config: PipelineConfig, served, section: str) -> PipelineConfig:
    """``config`` with the ``role:`` endpoints of ``section`` (``captions``, ``data`` or ``rollout``)
    replaced by the URLs of the served role (started now if it is not running yet): what a stage runs
    with. Only backends that use an endpoint (``openai``) are resolved."""
    replace = dataclasses.replace
    if section == "captions":
        c = config.captions
        return config if c.captioner != "openai" else replace(config, captions=replace(
            c, endpoint=served.endpoint(c.endpoint)))
    if section == "data":
        d = config.data
        return config if d.video_qa != "openai" else replace(config, data=replace(
            d, video_qa_options=served.options(d.video_qa_options)))
    r = config.rl.rollout
    return config if r.video_qa != "openai" else replace(config, rl=replace(config.rl, rollout=replace(
        r, video_qa_options=served.options(r.video_qa_options))))


# ---------------------------------------------------------------------------------- the driver


def run_pipeline(config: PipelineConfig, until: str | None = None, redo: tuple[str, ...] = ()) -> dict:
    """Run every stage that is not done (see the module docstring); ``until`` names the last stage to
    run; stages named in ``redo`` are redone from scratch even when they are done."""
    if until is not None and until not in STAGES:
        raise InputError(f"stage {until!r}: choose one of {', '.join(STAGES)}")
    unknown = sorted(set(redo) - set(STAGES))
    if unknown:
        raise InputError(f"stage(s) {', '.join(unknown)} to redo: choose from {', '.join(STAGES)}")
    from longvideo_r1.cluster.served import ServedRoles
    from longvideo_r1.platform.tracking import Tracker

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    home = config.storage.uri
    if home:
        got = storage.restore(home, out)     # a run that lost its machine continues from what it published
        if got["files"]:
            _log("storage", f"restored {got['files']} files ({got['bytes'] / 1e6:.1f} MB) from {home}")
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    book = StageBook(out)
    seconds: dict[str, float] = {}
    result: dict = {}
    last = STAGES.index(until) if until else len(STAGES) - 1
    tracker = Tracker(config.tracking, out, config.name)

    served = ServedRoles(config.served, config.placement, before_start=lambda: start_ray(config))
    with tracker.pipeline(params=to_dict(config), tags={"lvr1.output_dir": str(out)}) as parent, served:

        def stage(name: str, fp: str, done_when: Path, clear: list[Path], fn, continues: bool = True,
                  record=lambda value: {}):
            """Run ``fn(run)`` unless the stage is done (``done_when`` is its last output); a stage redone
            from scratch first removes ``clear``; a stage that ran is recorded finished, with
            ``record(value)`` kept beside its fingerprint. Returns (ran, value)."""
            state = book.state(name, fp, done_when.exists())
            if name in redo:
                state = "new"
            if state == "done":
                _log(name, f"up to date (fingerprint {fp}), skipping")
                return False, None
            if state == "new" or not continues:
                for path in clear:
                    _clear(path)
            t = time.perf_counter()
            book.start(name, fp)
            publishing = (storage.Publisher(out, home, config.storage.publish_every_s, lambda m: _log(name, m))
                          if home else contextlib.nullcontext())
            with tracker.stage(name) as run, publishing:   # a fresh nested run for a stage that really runs
                value = fn(run)
            seconds[name] = time.perf_counter() - t
            parent.log_metrics({f"time/{name}_s": seconds[name]})
            book.finish(name, **record(value))
            publish(name)
            return True, value

        def publish(name: str) -> None:
            if home:
                t = time.perf_counter()
                sent = storage.publish(out, home)
                _log("storage", f"{name}: published {sent['files']} files ({sent['bytes'] / 1e6:.1f} MB, "
                                f"{sent['deleted']} deleted) to {home} in {time.perf_counter() - t:.1f} s")

        def finish() -> dict:
            result["stage_seconds"] = {k: round(v, 1) for k, v in seconds.items()}
            (out / "summary.json").write_text(json.dumps(result, indent=1, default=str))
            return result          # the CLI prints it on stdout

        # corpus and caption store
        corpus_dir, store = out / "corpus", out / "store"
        corpus_fp = corpus_fingerprint(config)
        stage("corpus", corpus_fp, corpus_dir / "questions.jsonl", [corpus_dir],
              lambda run: corpus_stage(config, corpus_dir), continues=False)
        c = config.captions
        # where the captioner is served (endpoint, endpoints) does not change the captions: its model does
        # (the None keeps the fingerprints of runs made when the endpoint was part of it)
        captions_fp = fingerprint("captions", corpus_fp, c.captioner, None, c.model, c.shards)
        stage("captions", captions_fp, store / "manifest.json", [store], lambda run: captions_stage(
            with_endpoints(config, served, "captions"), corpus_dir, store, run.log_metrics))
        result.update(summarize(corpus_dir, store))
        # rollout workers on any node read the published store; without storage.uri, this node's copy
        shared_store = storage.join(home, "store") if home else store
        if last <= STAGES.index("captions") or not (config.sft.enabled or config.rl.enabled or config.eval.enabled):
            return finish()

        # the policy to start from
        t = time.perf_counter()
        base = resolve_model(config, corpus_dir, store)
        seconds["model"] = time.perf_counter() - t
        model_fp = fingerprint("model", model_fingerprint(base))
        start_ray(config)
        models = {"base": base}
        policy, policy_fp = base, model_fp

        if config.sft.enabled:
            data_path = out / "data" / "sft.jsonl"
            sft_data_fp = fingerprint("sft_data", corpus_fp, captions_fp, _section(config.data, drop=DATA_OPERATIONAL))
            stage("sft_data", sft_data_fp, data_path, [data_path],
                  lambda run: sft_data_stage(with_endpoints(config, served, "data"), corpus_dir, store, data_path),
                  record=lambda summary: {"summary": {k: summary.get(k) for k in SFT_DATA_KEYS}})
            result["sft_data"] = book.get("sft_data", "summary")
            if last <= STAGES.index("sft_data"):
                return finish()
            from longvideo_r1.trainer.sft import train_sft

            sft_fp = fingerprint("sft", sft_data_fp, model_fp, _section(config.sft, drop=SFT_OPERATIONAL))
            sft_dir = out / "sft"
            _, summary = stage("sft", sft_fp, sft_dir / "model" / "config.json", [sft_dir], lambda run: train_sft(
                config.sft, data_path, base, sft_dir, log_metrics=run.log_metrics, placement=config.placement))
            summary = summary or json.loads((sft_dir / "summary.json").read_text())
            policy = models["sft"] = Path(summary["model"])
            policy_fp = sft_fp
            result["sft"] = {k: v for k, v in summary.items() if k != "history"}
        if last <= STAGES.index("sft"):
            return finish()

        if config.rl.enabled:
            data_dir = out / "data"
            rl_data_fp = fingerprint("rl_data", corpus_fp, captions_fp, config.rl.rollout.max_rounds)
            train_rows = data_dir / "rl_train.parquet"

            stage("rl_data", rl_data_fp, train_rows, [data_dir / f"rl_{s}.parquet" for s in ("train", "val")],
                  lambda run: rl_data_stage(config, corpus_dir, store, data_dir), continues=False,
                  record=lambda paths: {"paths": paths})
            paths = book.get("rl_data", "paths")
            if last <= STAGES.index("rl_data"):
                return finish()
            from longvideo_r1.trainer.rl import train_rl

            rl_dir = out / "rl"
            rl_fp = fingerprint("rl", rl_data_fp, policy_fp,
                                _section(config.rl, drop=RL_CONTINUES + RL_OPERATIONAL))
            # the fingerprint leaves rl.steps out: more steps continue a finished run, not redo it
            if book.get("rl", "fingerprint") == rl_fp and book.get("rl", "steps_done", 0) < config.rl.steps:
                if book.get("rl", "finished"):
                    _log("rl", f"continuing from step {book.get('rl', 'steps_done')} to {config.rl.steps}")
                book.records["rl"]["finished"] = False
            _, summary = stage("rl", rl_fp, rl_dir / "model" / "config.json", [rl_dir], lambda run: _train_rl(
                train_rl, with_endpoints(config, served, "rollout"), paths, shared_store, policy, rl_dir, run),
                record=lambda _: {"steps_done": config.rl.steps})
            summary = summary or json.loads((rl_dir / "summary.json").read_text())
            label = "sft+" + config.rl.algorithm if config.sft.enabled else config.rl.algorithm
            models[label] = Path(summary["model"])
            result["rl"] = {k: v for k, v in summary.items() if k != "history"}
            policy_fp = fingerprint(rl_fp, config.rl.steps)
        if last <= STAGES.index("rl"):
            return finish()

        if config.eval.enabled:
            from longvideo_r1.eval.pipeline_eval import evaluate_stage

            eval_fp = fingerprint("eval", corpus_fp, captions_fp, model_fp, policy_fp, sorted(models),
                                  _section(config.eval), _section(config.rl.rollout))
            stage("eval", eval_fp, out / "eval" / "report.md", [out / "eval"], lambda run: evaluate_stage(
                with_endpoints(config, served, "rollout"), corpus_dir, store, models, out / "eval", run),
                record=lambda report: {"report": report})
            result["eval"] = book.get("eval", "report")
        return finish()


def _train_rl(train_rl, config: PipelineConfig, paths: dict, store, policy: Path, rl_dir: Path, run) -> dict:
    summary = train_rl(config.rl, paths["train"], paths.get("val"), store, policy, rl_dir,
                       log_metrics=run.log_metrics, placement=config.placement)
    if (rl_dir / "samples").is_dir():
        run.log_artifact(str(rl_dir / "samples"), "samples")   # sample trajectories per step
    return summary
