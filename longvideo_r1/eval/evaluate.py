"""Evaluating navigators on a benchmark: many episodes at once, one resumable result file per policy.

``run_eval(benchmark, store, policies, out_dir, config)`` plays every question of the benchmark with
every policy and appends one JSON line per finished question to ``OUT/<label>.jsonl``::

    {"qid", "video_id", "task_type", "task_types", "question", "truth", "answer", "correct", "rounds",
     "calls": {"get_caption", "video_qa", "invalid"}, "visited": [[h, m], [h, m, l], …],
     "video_qa_segments": [...], "visited_fraction", "clue_intervals", "coverage", "precision", "f1",
     "reward", "reward_terms": {score, answer_reward, f1_reward, repeat_reward}, "data_source",
     "costs": {rounds, get_caption_calls, video_qa_calls, invalid_rounds, policy_seconds,
               video_qa_seconds, get_caption_seconds, model_seconds},
     "width", "duration", "trace": [{"round", "kind", "ids", "query", "dropped", "think"}, …],
     "policy", "spec", "wall_seconds", "finished_at"}

A rerun reads the file back and plays only the questions not in it (a half-written last line, left
by a crash, is cut off first), so an interrupted evaluation resumes where it stopped. The settings
a file was made with (policy spec, round limit, video_qa backend, benchmark and split) are kept in
``OUT/<label>.meta.json``; resuming with other settings is refused rather than mixing runs.

Episodes run on ``workers`` threads. Each thread takes a policy instance from a per-policy pool
(built with :func:`~longvideo_r1.agent.policies.make_policy` when the pool is empty, so there are
at most ``workers`` instances of each: one local model per worker); the caption store and the
video_qa backend are shared (both are safe to share between threads). The reward is
:func:`~longvideo_r1.reward.score.compute_score` on the episode's accepted rounds (an answer inside a
round the rules rejected earns nothing, as in RL's default ``answer_rule: valid``): questions with
clue intervals get the full reward (answer + localisation F1 − repeats), others the answer alone.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longvideo_r1.agent.episode import Episode, EpisodeConfig
from longvideo_r1.agent.policies import OraclePolicy, make_policy
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.agent.video_qa import VIDEO_QA_BACKENDS
from longvideo_r1.corpus.annotations import Benchmark
from longvideo_r1.errors import InputError
from longvideo_r1.jsonl import complete_lines, json_lines
from longvideo_r1.eval.metrics import localisation, summarize_records, visited_fraction
from longvideo_r1.reward.score import (RewardConfig, compute_score, reward_source)

MAX_FAILURES_IN_A_ROW = 5
VIDEO_QA_KINDS = (*VIDEO_QA_BACKENDS, "none")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
THINK_CHARS = 240


# ====================================================================== policies

@dataclass(frozen=True)
class PolicySpec:
    label: str
    """names the result file (``<label>.jsonl``) and the policy in reports"""
    spec: str
    """what :func:`make_policy` is given: a baseline, ``openai:MODEL@URL`` or ``local:DIR``"""


def default_label(spec: str) -> str:
    """A label from a spec: ``random`` -> ``random``; ``openai:qwen3@http://…`` -> ``openai-qwen3``;
    ``local:runs/sft/ckpt`` -> ``local-ckpt``."""
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        rest = rest.rpartition("@")[0] or rest
    elif kind == "local":
        rest = Path(rest.rstrip("/\\")).name
    text = f"{kind}-{rest}" if rest else kind
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-.")[:64] or "policy"


def parse_policy(text: str) -> PolicySpec:
    """``SPEC`` or ``LABEL=SPEC`` (the label: letters, digits, ``_ . + -``)."""
    text = text.strip()
    label, eq, spec = text.partition("=")
    if eq and _LABEL.match(label) and spec and not re.search(r"[:/@]", label):
        return PolicySpec(label, spec.strip())
    if not text:
        raise InputError("--policy: give a policy, e.g. --policy random or --policy mine=openai:MODEL@URL")
    return PolicySpec(default_label(text), text)


class PolicyPool:
    """Instances of one policy, handed to one thread at a time (built on demand, kept for reuse)."""

    def __init__(self, spec: PolicySpec, factory=None):
        self.spec = spec
        self.factory = factory or make_policy
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.built = 0

    def _build(self):
        with self._lock:
            self.built += 1
        return self.factory(self.spec.spec)

    def prime(self):
        """Build the first instance now (errors surface before any episode runs)."""
        policy = self._build()
        self._free.put(policy)
        return policy

    def acquire(self):
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return self._build()

    def release(self, policy) -> None:
        self._free.put(policy)


# ====================================================================== settings and records

@dataclass
class EvalConfig:
    max_rounds: int = EpisodeConfig.max_rounds
    """round limit per episode (30 at evaluation, PROTOCOL §2)"""
    workers: int = 1
    """episodes played at once (threads)"""
    limit: int | None = None
    """play only the first N questions of the benchmark (a later run without it plays the rest)"""
    video_qa: str = "offline"
    """video_qa backend: offline (real footage), demo (the generated demo world), openai (needs
    video_qa_options endpoint and model) or none"""
    video_qa_options: dict = field(default_factory=dict)
    reward: RewardConfig = field(default_factory=RewardConfig)
    progress: bool = True

    def check(self) -> None:
        if self.max_rounds < 1:
            raise InputError(f"--max-rounds {self.max_rounds}: give 1 or more rounds")
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: give 1 or more")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit {self.limit}: give 1 or more questions (or leave it out for all)")
        if self.video_qa not in VIDEO_QA_KINDS:
            raise InputError(f"--video-qa {self.video_qa!r}: choose {', '.join(VIDEO_QA_KINDS)}")


def _trace(episode: Episode) -> list[dict]:
    out = []
    for turn in episode.turns:
        a = turn.action
        item = {"round": turn.round, "kind": a.kind}
        if a.ids is not None:
            item["ids"] = list(a.ids)
        if a.kind == "video_qa" and a.query:
            item["query"] = a.query
        if a.kind == "answer":
            item["answer"] = a.answer
        if turn.dropped:
            item["dropped"] = True
            item["message"] = a.message
        if a.think:
            item["think"] = a.think[:THINK_CHARS] + ("…" if len(a.think) > THINK_CHARS else "")
        out.append(item)
    return out


def episode_record(episode: Episode, spec: PolicySpec, task_types: tuple[str, ...], wall_seconds: float,
                   reward: RewardConfig | None = None) -> dict:
    """The result line of one finished episode."""
    reward = reward or RewardConfig()
    q = episode.question
    loc = localisation(episode.visited, episode.width, episode.duration, q.clue_intervals, reward.clue_merge_gap)
    terms = None
    if q.answer is not None:
        source = reward_source(q)
        terms = compute_score(source, episode.solution_str(accepted_only=True), q.answer,
                              {"width": episode.width, "duration": episode.duration,
                               "clue_intervals": q.clue_intervals}, config=reward)
    costs = {**asdict(episode.costs), "model_seconds": episode.costs.model_seconds}
    return {
        "qid": q.qid, "video_id": q.video_id, "task_type": q.task_type,
        "task_types": list(task_types) or ([q.task_type] if q.task_type else []),
        "question": q.question, "truth": q.answer, "answer": episode.answer, "correct": episode.correct,
        "rounds": len(episode.turns),
        "calls": {"get_caption": episode.costs.get_caption_calls, "video_qa": episode.costs.video_qa_calls,
                  "invalid": episode.costs.invalid_rounds},
        "visited": [list(v) for v in episode.visited],
        "video_qa_segments": [list(v) for v in episode.video_qa_segments],
        "visited_fraction": visited_fraction(episode.visited, episode.width, episode.duration),
        "clue_intervals": q.clue_intervals,
        "coverage": loc[0] if loc else None, "precision": loc[1] if loc else None, "f1": loc[2] if loc else None,
        "reward": terms["score"] if terms else None, "reward_terms": terms,
        "data_source": reward_source(q),
        "costs": costs, "width": episode.width, "duration": episode.duration,
        "trace": _trace(episode),
        "policy": spec.label, "spec": spec.spec, "wall_seconds": round(wall_seconds, 4),
        "finished_at": time.time(),
    }


# ====================================================================== result files

def read_results(path: str | Path, repair: bool = False) -> list[dict]:
    """The records of one result file. A half-written last line (a crash) is skipped, and with
    ``repair`` cut off the file; a malformed line elsewhere is an :class:`InputError`."""
    path = Path(path)
    if not path.exists():
        return []
    raw = complete_lines(path, repair)
    records = []
    for n, record in json_lines(raw.decode("utf-8", "replace"), f"result file {path}",
                                "remove the line (its question will be run again)"):
        if not isinstance(record, dict) or not isinstance(record.get("qid"), str) or "calls" not in record:
            raise InputError(f"result file {path} line {n}: not an lvr1 eval result; remove the line or use "
                             "another --out")
        records.append(record)
    return records


def _meta(benchmark: Benchmark, spec: PolicySpec, config: EvalConfig) -> dict:
    return {"label": spec.label, "spec": spec.spec, "benchmark": benchmark.name, "format": benchmark.format,
            "split": benchmark.split, "max_rounds": config.max_rounds, "video_qa": config.video_qa}


_RESUME_KEYS = ("spec", "benchmark", "format", "split", "max_rounds", "video_qa")


def _check_resume(meta_path: Path, meta: dict) -> None:
    if not meta_path.is_file():
        return
    try:
        old = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return
    changed = [f"{k} {old.get(k)!r} -> {meta[k]!r}" for k in _RESUME_KEYS if k in old and old[k] != meta[k]]
    if changed:
        raise InputError(f"results {meta_path.with_suffix('').with_suffix('.jsonl')} were made with other settings "
                         f"({'; '.join(changed)}); pass another --out, another label (--policy NAME=SPEC), or "
                         "delete the file to start over")


# ====================================================================== the run

class SharedCaptions:
    """A caption source that many threads may use: lookups (microseconds each) take turns on a lock,
    which keeps the store's LRU cache and lazy shard loading consistent."""

    def __init__(self, captions):
        self.captions = captions
        self._lock = threading.Lock()

    def get(self, video_id, ids):
        with self._lock:
            return self.captions.get(video_id, ids)

    def video(self, video_id):
        with self._lock:
            return self.captions.video(video_id)


def open_store(store: str | Path, video_ids) -> object:
    """The caption store, refusing one that is missing or lacks a benchmark video."""
    from longvideo_r1.corpus.store import CaptionStore

    root = Path(store)
    if not root.exists():
        raise InputError(f"caption store {root}: no such folder; build it with "
                         f"`lvr1 captions build --videos VIDEOS --out {root}`")
    return CaptionStore(root).require(video_ids, "benchmark video(s)")


def _video_qa_backend(config: EvalConfig, captions, video_ids):
    if config.video_qa == "none":
        return None
    no_file = sorted(v for v in set(video_ids) if not captions.video(v).source_path)
    if no_file:
        raise InputError(f"video_qa needs the video files, but the caption store records none for "
                         f"{', '.join(no_file[:3])}{' …' if len(no_file) > 3 else ''}; pass --video-qa none or "
                         "rebuild the store from the videos (`lvr1 captions build`, `captions import --videos`)")
    from longvideo_r1.agent.video_qa import make_video_qa

    if config.video_qa == "openai" and not (config.video_qa_options.get("endpoint")
                                            and config.video_qa_options.get("model")):
        raise InputError("--video-qa openai needs --video-qa-endpoint URL and --video-qa-model NAME")
    return make_video_qa(config.video_qa, **config.video_qa_options)


def run_eval(benchmark: Benchmark, store: str | Path, policies: list[PolicySpec], out_dir: str | Path,
             config: EvalConfig | None = None, factory=None) -> dict:
    """Play every unfinished question of ``benchmark`` with every policy; returns a summary.

    ``factory(spec)`` builds a policy instance (``make_policy`` by default). Every check that can
    fail on input (policies, store, videos, earlier results) runs before the first episode.
    """
    config = config or EvalConfig()
    factory = factory or make_policy
    config.check()
    if not policies:
        raise InputError("give at least one --policy")
    labels = [p.label for p in policies]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"--policy labels must differ; {', '.join(dupes)} is given twice: name them, "
                         "e.g. --policy r1=random --policy r2=random")
    for p in policies:
        if not _LABEL.match(p.label):
            raise InputError(f"--policy label {p.label!r}: use letters, digits, '_', '.', '+' and '-'")

    questions = benchmark.questions[: config.limit] if config.limit else list(benchmark.questions)
    video_ids = {q.video_id for q in questions}
    captions = open_store(store, video_ids)
    video_qa = _video_qa_backend(config, captions, video_ids)
    tools = Tools(SharedCaptions(captions), video_qa)
    episode_config = EpisodeConfig(max_rounds=config.max_rounds)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo: dict[str, list] = {}
    done_before: dict[str, int] = {}
    for p in policies:
        meta = _meta(benchmark, p, config)
        _check_resume(out / f"{p.label}.meta.json", meta)
        done = {r["qid"] for r in read_results(out / f"{p.label}.jsonl", repair=True)}
        done_before[p.label] = sum(1 for q in questions if q.qid in done)
        todo[p.label] = [q for q in questions if q.qid not in done]

    pools = {}
    for p in policies:   # the first instance of each policy now: an unknown policy fails before any episode
        pools[p.label] = pool = PolicyPool(p, factory)
        if todo[p.label]:
            first = pool.prime()
            if isinstance(first, OraclePolicy):
                lacking = [q.qid for q in todo[p.label] if not q.clue_intervals]
                if lacking:
                    raise InputError(f"policy {p.label} ({p.spec}) walks to the clue intervals, but "
                                     f"{len(lacking)} question(s) of {benchmark.name} have none (e.g. {lacking[0]}); "
                                     "evaluate the oracle on a benchmark with clues (demo, CG-Bench, LVBench)")
    for p in policies:
        (out / f"{p.label}.meta.json").write_text(json.dumps(_meta(benchmark, p, config), indent=1))
    (out / "run.json").write_text(json.dumps({
        "benchmark": benchmark.name, "benchmark_path": str(benchmark.path), "format": benchmark.format,
        "split": benchmark.split, "questions": len(benchmark.questions), "limit": config.limit,
        "store": str(store), "max_rounds": config.max_rounds, "video_qa": config.video_qa,
        "workers": config.workers, "policies": [{"label": p.label, "spec": p.spec} for p in policies],
        "started_at": time.time()}, indent=1))

    tasks_of = benchmark.tasks_of
    specs = {p.label: p for p in policies}

    def play(label: str, question):
        pool = pools[label]
        policy = pool.acquire()
        try:
            t0 = time.perf_counter()
            episode = run_episode(policy, question, tools, episode_config)
            return episode_record(episode, specs[label], tasks_of(question), time.perf_counter() - t0, config.reward)
        finally:
            pool.release(policy)

    ran = {p.label: 0 for p in policies}
    failed = {p.label: [] for p in policies}
    stopped: dict[str, str] = {}
    in_a_row = {p.label: 0 for p in policies}
    total = sum(len(v) for v in todo.values())
    files = {p.label: open(out / f"{p.label}.jsonl", "a", encoding="utf-8") for p in policies}
    t_start = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lvr1-eval") as executor:
            futures = {}
            # interleave the policies so that a partial run has results for each of them
            for k in range(max((len(v) for v in todo.values()), default=0)):
                for p in policies:
                    if k < len(todo[p.label]):
                        q = todo[p.label][k]
                        futures[executor.submit(play, p.label, q)] = (p.label, q)
            try:
                for count, future in enumerate(as_completed(futures), start=1):
                    label, q = futures[future]
                    if future.cancelled():
                        continue
                    try:
                        record = future.result()
                    except InputError as exc:
                        failed[label].append(q.qid)
                        in_a_row[label] += 1
                        print(f"lvr1: error: policy {label}, question {q.qid}: {exc}", file=sys.stderr, flush=True)
                        if in_a_row[label] >= MAX_FAILURES_IN_A_ROW and label not in stopped:
                            stopped[label] = str(exc)
                            for f, (other, _) in futures.items():
                                if other == label:
                                    f.cancel()
                            print(f"lvr1: error: policy {label}: stopped after {in_a_row[label]} failed questions "
                                  "in a row; a rerun resumes", file=sys.stderr, flush=True)
                        continue
                    in_a_row[label] = 0
                    files[label].write(json.dumps(record, ensure_ascii=False) + "\n")
                    files[label].flush()
                    ran[label] += 1
                    if config.progress and (count % max(1, total // 10) == 0 or count == total):
                        print(f"[lvr1 eval] {count}/{total} episodes ({time.perf_counter() - t_start:.0f} s)",
                              file=sys.stderr, flush=True)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        for fh in files.values():
            fh.close()

    summary = {"out": str(out), "benchmark": benchmark.name, "format": benchmark.format, "split": benchmark.split,
               "questions": len(questions), "seconds": round(time.perf_counter() - t_start, 2), "policies": {}}
    for p in policies:
        records = read_results(out / f"{p.label}.jsonl")
        wanted = {q.qid for q in questions}
        metrics = summarize_records([r for r in records if r["qid"] in wanted])
        summary["policies"][p.label] = {
            "spec": p.spec, "played": ran[p.label], "skipped_existing": done_before[p.label],
            "failed": len(failed[p.label]), "stopped": p.label in stopped, "instances": pools[p.label].built,
            **metrics}
    summary["failed"] = sum(len(v) for v in failed.values())
    return summary
