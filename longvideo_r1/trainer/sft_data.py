"""SFT trajectories from a teacher (``lvr1 data sft``).

One teacher episode per question of a corpus split (:mod:`longvideo_r1.agent.teacher`), played
under the same episode rules as the RL rollout runner (``EpisodeConfig(max_rounds=15,
keep_malformed=True, last_round_note="append")``), so an SFT context is token for token what the
policy sees in RL. Output: JSON lines, one trajectory each::

    {"qid", "video_id", "split", "task_type", "teacher", "correct", "answer", "rounds", "attempts",
     "hints", "hint_leak", "invalid_rounds", "calls", "prompt_tokens", "completion_tokens",
     "call_seconds", "seconds",
     "messages": [system, user, assistant, user (observation), …, assistant], "costs": {…}}

``messages`` is the cleaned, hint-free trajectory (see the teacher module for what is kept);
``calls``/``prompt_tokens``/``completion_tokens``/``call_seconds`` are what the teacher model used on
the question (every call, wrong answers included; tokens as the server reported them) and
``seconds`` the wall-clock time of the teacher episode. Only trajectories that end in a correct
answer (and whose reasoning does not mention a hint) are kept unless asked otherwise. The file is
appended to as results arrive, and only once there is something to write (a run that keeps nothing
leaves no file behind): a rerun skips the questions already in it. A LLaMA-Factory copy (``sharegpt``
formatting: ``system`` plus ``conversations`` of ``human``/``gpt`` turns, observations as ``human``
turns since they are user turns of the chat template) can be written with a matching
``dataset_info.json`` entry. LLaMA-Factory renders history with its own template; the exact
RL-consistent tokenisation is :func:`longvideo_r1.trainer.batches.tokenize_trajectory`.

Parallelism: with ``concurrency`` 1 the questions are played one after another in this process.
With more, they are played on Ray (a local Ray is started, and stopped again, when none is running):
a few actors (:class:`TeacherWorker`, started by :class:`~longvideo_r1.actors.ActorGroup`), each
holding the caption-store tools, the video_qa backend and a copy of the teacher, and serving several
questions at once on its threads; the driver keeps at most ``concurrency`` questions in flight in
total and writes each result as it comes back. ``use_ray=False`` plays them on that many threads of
this process instead.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from longvideo_r1.agent.episode import Question
from longvideo_r1.agent.protocol import DEFAULT_SYSTEM_PROMPT
from longvideo_r1.errors import InputError
from longvideo_r1.jsonl import complete_lines, json_lines
from longvideo_r1.trainer.splits import (
    MAX_ROUNDS,
    episode_config,
    load_corpus_split,
    open_tools,
)

MAX_FAILURES_IN_A_ROW = 5
"""questions failing one after another before the teacher run stops (an endpoint that is down)"""
QUESTIONS_PER_ACTOR = 4
"""questions in flight per Ray actor (threads), before another actor is started (CPUs permitting)"""
USAGE_KEYS = ("calls", "prompt_tokens", "completion_tokens", "call_seconds")


def trajectory_record(row: dict, split: str, teacher: str, result) -> dict:
    """One JSONL line from a :class:`~longvideo_r1.agent.teacher.TeacherResult`."""
    episode = result.episode
    messages = [dict(m) for m in episode.messages]
    while messages and messages[-1]["role"] == "user" and len(messages) > 2:
        messages.pop()      # no answer: the last observation has no assistant turn after it
    costs = {**asdict(episode.costs), "model_seconds": episode.costs.model_seconds}
    return {"qid": row["qid"], "video_id": row["video_id"], "split": split, "task_type": row.get("task_type"),
            "teacher": teacher, "correct": episode.correct, "answer": episode.answer, "rounds": len(episode.turns),
            "attempts": result.attempts, "hints": list(result.hints), "hint_leak": result.hint_leak,
            "invalid_rounds": result.invalid_rounds, "calls": result.calls, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "call_seconds": round(result.call_seconds, 4),
            "seconds": round(result.seconds, 4), "messages": messages, "costs": costs}


def read_sft_records(path: str | Path) -> list[dict]:
    """Every trajectory of an SFT JSONL file, each with ``_line`` (its line number); a malformed line
    is an :class:`InputError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"SFT data {path}: no such file; make it with `lvr1 data sft --out {path}`")
    records = []
    for n, record in json_lines(path.read_text(encoding="utf-8"), f"SFT data {path}",
                                "remove or fix the line (or regenerate the file with `lvr1 data sft`)"):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or len(messages) < 3 or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise InputError(f"SFT data {path} line {n}: needs \"messages\", a list of at least 3 "
                             "{\"role\", \"content\"} objects (system, user, assistant, …)")
        record["_line"] = n
        records.append(record)
    return records


def _resume(out: Path) -> set[str]:
    """Question ids already in ``out``; a half-written last line (a crash) is cut off first."""
    if not out.exists():
        return set()
    complete_lines(out, repair=True)
    return {r.get("qid") for r in read_sft_records(out)}


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 2) if values else 0.0


# ====================================================================== playing one question

def play_question(teacher, tools, config, row: dict, split: str) -> dict:
    """Play ``row`` with ``teacher``: ``{"qid", "record"}``, or ``{"qid", "error", "usage"}`` when it
    failed with an :class:`InputError` (an endpoint error); other errors propagate."""
    try:
        result = teacher.run(Question.from_row(row), tools, config)
    except InputError as exc:
        usage = getattr(exc, "usage", None) or {}
        return {"qid": row["qid"], "error": str(exc), "usage": {k: usage.get(k, 0) for k in USAGE_KEYS}}
    return {"qid": row["qid"], "record": trajectory_record(row, split, getattr(teacher, "name", "teacher"), result)}


def build_video_qa(video_qa):
    """A video_qa backend from what :func:`generate_sft` was given: None, a backend, or a spec
    (``"offline"``, ``("openai", {"endpoint": …, "model": …})``) built with ``make_video_qa``."""
    if video_qa is None or video_qa == "none":
        return None
    if isinstance(video_qa, str):
        video_qa = (video_qa, {})
    if isinstance(video_qa, tuple) and len(video_qa) == 2 and isinstance(video_qa[0], str):
        from longvideo_r1.agent.video_qa import make_video_qa

        return make_video_qa(video_qa[0], **dict(video_qa[1] or {}))
    return video_qa


class TeacherWorker:
    """The body of a Ray actor that plays SFT questions: the tools over the caption store, the video_qa
    backend and a copy of the teacher, serving several questions at once (one per actor thread)."""

    def __init__(self, store: str, video_ids: list[str], video_qa, teacher, config, split: str):
        self.tools = open_tools(store, video_ids, build_video_qa(video_qa))
        self.teacher = teacher
        self.config = config
        self.split = split

    def ready(self) -> int:
        return os.getpid()

    def play(self, row: dict) -> dict:
        return play_question(self.teacher, self.tools, self.config, row, self.split)


def _in_process(teacher, tools, config, todo: list[dict], split: str, threads: int) -> Iterator[dict]:
    if threads == 1:
        for row in todo:
            yield play_question(teacher, tools, config, row, split)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sft-teacher") as pool:
        futures = [pool.submit(play_question, teacher, tools, config, row, split) for row in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _check_shippable(teacher, video_qa) -> None:
    """An :class:`InputError` unless the teacher and the video_qa backend can travel to Ray actors."""
    from ray import cloudpickle

    for thing, advice in ((teacher, "use a teacher made by make_teacher"),
                          (video_qa, "pass the video_qa backend as a spec such as \"offline\" or "
                                     "(\"openai\", {\"endpoint\": …, \"model\": …}) for each worker to build")):
        try:
            cloudpickle.dumps(thing)
        except Exception as exc:
            raise InputError(f"SFT data on Ray: {type(thing).__name__} cannot be sent to the Ray workers "
                             f"({type(exc).__name__}: {exc}); {advice}, or play the questions in this process "
                             "(concurrency 1, or use_ray=False)") from None


def _on_ray(teacher, store, video_ids, video_qa, config, todo: list[dict], split: str, concurrency: int,
            ray_cpus: int | None) -> Iterator[dict]:
    """Play ``todo`` on Ray actors, at most ``concurrency`` questions in flight; results as they come."""
    import ray

    from longvideo_r1.actors import ActorGroup, init_ray

    started = init_ray(num_cpus=ray_cpus or max(2, os.cpu_count() or 1))   # unless Ray is running
    group = None
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = max(1, min(concurrency, cpus, math.ceil(concurrency / QUESTIONS_PER_ACTOR)))
        threads = math.ceil(concurrency / actors)
        group = ActorGroup(TeacherWorker, actors, (str(store), sorted(video_ids), video_qa, teacher, config, split),
                           options={"num_cpus": 1, "max_concurrency": threads}, what="SFT teacher workers")
        group.start()
        queue = list(todo)
        running: dict = {}                                  # ObjectRef -> slot
        load = [0] * actors
        while queue or running:
            while queue and len(running) < concurrency:
                slot = min(range(actors), key=lambda i: load[i])
                running[group[slot].play.remote(queue.pop(0))] = slot
                load[slot] += 1
            done, _ = ray.wait(list(running), num_returns=1)
            load[running.pop(done[0])] -= 1
            yield ray.get(done[0])
    finally:
        if group is not None:
            group.shutdown()
        if started:
            ray.shutdown()


class _Output:
    """The JSONL file, opened for appending at the first line written (so nothing kept, no file)."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def write(self, record: dict) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _price(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{name} {value!r}: give a price in US dollars per token, 0 or more (e.g. 1.25e-06)")
    return float(value)


def generate_sft(corpus_dir, store, teacher, out, split: str = "train", max_rounds: int = MAX_ROUNDS,
                 keep_wrong: bool = False, video_qa=None,
                 system_template: str = DEFAULT_SYSTEM_PROMPT, sharegpt=None, progress: bool = True, *,
                 concurrency: int = 1, use_ray: bool | None = None,
                 price_per_input_token: float | None = None, price_per_output_token: float | None = None,
                 ray_cpus: int | None = None) -> dict:
    """Play ``teacher`` on every question of ``split`` not yet in ``out``, append the kept
    trajectories to ``out`` as they come and return a summary.

    ``concurrency``: questions in flight at once. 1 plays them one by one in this process; more plays
    them on Ray (``use_ray`` None or True; a local Ray of ``ray_cpus`` CPUs is started if none is
    running) or, with ``use_ray=False``, on threads of this process.
    ``video_qa``: a backend, or a spec (``"offline"``, ``("openai", {options})``) that each Ray worker
    builds for itself (a backend object must pickle to go to Ray).
    ``price_per_input_token``/``price_per_output_token`` (US dollars per token, both or neither) give
    ``summary["cost_usd"]`` from the tokens the teacher's server reported; None when not given.

    Kept: trajectories ending in a correct answer and with no hint leak (all with ``keep_wrong``).
    Before any question is played the teacher's endpoint must answer (``teacher.check()``), else an
    :class:`InputError` says what to do. A question that fails (e.g. an endpoint error) is reported on
    one line on stderr and the others go on (``summary["failed"]``); after 5 failures in a row the run
    stops with the last error.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InputError(f"concurrency {concurrency!r}: give the number of questions to play at once, 1 or more")
    price_in = _price("price_per_input_token", price_per_input_token)
    price_out = _price("price_per_output_token", price_per_output_token)
    if (price_in is None) != (price_out is None):
        raise InputError("give both price_per_input_token and price_per_output_token (US dollars per token), "
                         "or neither")
    on_ray = concurrency > 1 if use_ray is None else bool(use_ray)
    config = episode_config(max_rounds, system_template)
    rows = load_corpus_split(corpus_dir, split)
    video_ids = {r["video_id"] for r in rows}
    backend = None if on_ray else build_video_qa(video_qa)
    tools = open_tools(store, video_ids, backend)      # every video must be in the store
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out)
    todo = [r for r in rows if r["qid"] not in done]
    name = getattr(teacher, "name", "teacher")
    check = getattr(teacher, "check", None)
    if todo and check is not None:
        check()
    t0 = time.perf_counter()
    kept, played, failed = [], [], []
    usage = dict.fromkeys(USAGE_KEYS, 0)
    in_a_row = 0
    output = _Output(out)
    if not todo:
        outcomes = iter(())
    elif on_ray:
        _check_shippable(teacher, video_qa)
        outcomes = _on_ray(teacher, store, video_ids, video_qa, config, todo, split, concurrency, ray_cpus)
    else:
        outcomes = _in_process(teacher, tools, config, todo, split, concurrency)
    try:
        for count, outcome in enumerate(outcomes, start=1):
            if "error" in outcome:
                for key in USAGE_KEYS:
                    usage[key] += outcome["usage"].get(key, 0)
                failed.append(outcome["qid"])
                in_a_row += 1
                print(f"lvr1: error: question {outcome['qid']}: {outcome['error']}", file=sys.stderr, flush=True)
                if in_a_row >= MAX_FAILURES_IN_A_ROW:
                    raise InputError(f"stopping after {in_a_row} questions in a row failed ({len(kept)} "
                                     f"trajectories written to {out}; a rerun resumes); last: {outcome['error']}")
                continue
            in_a_row = 0
            record = outcome["record"]
            for key in USAGE_KEYS:
                usage[key] += record.get(key, 0)
            played.append(record)
            if keep_wrong or (record["correct"] and not record["hint_leak"]):
                output.write(record)
                kept.append(record)
            if progress and (count % max(1, len(todo) // 10) == 0 or count == len(todo)):
                print(f"[lvr1 data] {count}/{len(todo)} questions played, {len(kept)} kept", file=sys.stderr,
                      flush=True)
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()           # stops the threads or the Ray actors
        output.close()
    cost = None
    if price_in is not None:
        cost = round(usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out, 6)
    summary = {
        "out": str(out), "split": split, "teacher": name, "questions": len(rows), "skipped_existing": len(done),
        "played": len(played), "kept": len(kept),
        "dropped_wrong": sum(1 for r in played if not r["correct"] and not keep_wrong),
        "dropped_hint_leak": sum(1 for r in played if r["correct"] and r["hint_leak"] and not keep_wrong),
        "failed": len(failed),
        "correct_rate": _mean(bool(r["correct"]) for r in played),
        "mean_rounds": _mean(r["rounds"] for r in kept),
        "get_caption_per_trajectory": _mean(r["costs"]["get_caption_calls"] for r in kept),
        "video_qa_per_trajectory": _mean(r["costs"]["video_qa_calls"] for r in kept),
        "mean_attempts": _mean(r["attempts"] for r in played),
        "hinted": sum(1 for r in played if r["hints"]),
        "concurrency": concurrency, "ray": on_ray,
        "teacher_calls": usage["calls"], "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"], "teacher_seconds": round(usage["call_seconds"], 3),
        "cost_usd": cost,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if sharegpt:
        summary["sharegpt"] = str(sharegpt)
        summary["dataset_info"] = str(write_sharegpt(read_sft_records(out) if out.exists() else [], sharegpt))
    return summary


def to_sharegpt(messages: list[dict]) -> dict:
    """One trajectory in LLaMA-Factory's sharegpt layout: ``system`` and ``human``/``gpt`` turns."""
    roles = {"user": "human", "assistant": "gpt"}
    has_system = bool(messages) and messages[0]["role"] == "system"
    system = messages[0]["content"] if has_system else ""
    rest = messages[1:] if has_system else messages
    return {"system": system, "conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in rest]}


def sharegpt_dataset_info(file_name: str) -> dict:
    """The ``dataset_info.json`` entry that tells LLaMA-Factory how to read :func:`to_sharegpt` rows."""
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}


def write_sharegpt(records: list[dict], path: str | Path, name: str | None = None) -> Path:
    """Write the sharegpt JSON list and add (or replace) its entry in ``dataset_info.json`` beside it.

    The entry is named ``name`` (default: the file name without extension). Returns the info file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [to_sharegpt(r["messages"]) for r in records]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    info_path = path.parent / "dataset_info.json"
    info = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"LLaMA-Factory dataset info {info_path}: not valid JSON ({exc}); fix or remove it") \
                from None
        if not isinstance(info, dict):
            raise InputError(f"LLaMA-Factory dataset info {info_path}: expected a JSON object of datasets")
    info[name or path.stem] = sharegpt_dataset_info(path.name)
    tmp = info_path.with_name(info_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    os.replace(tmp, info_path)
    return info_path


