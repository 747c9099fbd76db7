"""SFT trajectories from a teacher (``lvr1 data sft``).

One teacher episode per question of a corpus split (:mod:`longvideo_r1.agent.teacher`), played
under the same episode rules as the RL rollout runner (``EpisodeConfig(max_rounds=15,
keep_malformed=True, last_round_note="append")``), so an SFT context is token for token what the
policy sees in RL. Output: JSON lines, one trajectory each::

    {"qid", "video_id", "split", "task_type", "teacher", "correct", "answer", "rounds", "attempts",
     "hints", "hint_leak", "invalid_rounds",
     "messages": [system, user, assistant, user (observation), …, assistant], "costs": {…}}

``messages`` is the cleaned, hint-free trajectory (see the teacher module for what is kept). Only
trajectories that end in a correct answer (and whose reasoning does not mention a hint) are kept
unless asked otherwise. The file is appended to: a rerun skips the questions already in it. A
LLaMA-Factory copy (``sharegpt`` formatting: ``system`` plus ``conversations`` of ``human``/``gpt``
turns, observations as ``human`` turns since they are user turns of the chat template) can be
written with a matching ``dataset_info.json`` entry. LLaMA-Factory renders history with its own
template; the exact RL-consistent tokenisation is :func:`longvideo_r1.trainer.batches.tokenize_trajectory`.
"""

from __future__ import annotations

import json
import os
import sys
import time
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
            "invalid_rounds": result.invalid_rounds, "messages": messages, "costs": costs}


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


def generate_sft(corpus_dir, store, teacher, out, split: str = "train", max_rounds: int = MAX_ROUNDS,
                 workers: int = 1, keep_wrong: bool = False, video_qa=None,
                 system_template: str = DEFAULT_SYSTEM_PROMPT, sharegpt=None, progress: bool = True) -> dict:
    """Play ``teacher`` on every question of ``split`` not yet in ``out``, append the kept
    trajectories to ``out`` and return a summary.

    Kept: trajectories ending in a correct answer and with no hint leak (all with ``keep_wrong``).
    A question that fails (e.g. an endpoint error) is reported on one line on stderr and the
    others go on (``summary["failed"]``); after 5 failures in a row the run stops with the last error.
    """
    if workers < 1:
        raise InputError(f"--workers {workers}: give 1 or more")
    config = episode_config(max_rounds, system_template)
    rows = load_corpus_split(corpus_dir, split)
    tools = open_tools(store, {r["video_id"] for r in rows}, video_qa)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _resume(out)
    todo = [r for r in rows if r["qid"] not in done]
    t0 = time.perf_counter()
    kept, played, failed = [], [], []
    in_a_row = 0
    name = getattr(teacher, "name", "teacher")
    with open(out, "a", encoding="utf-8") as fh, ThreadPoolExecutor(max_workers=workers,
                                                                       thread_name_prefix="sft-teacher") as pool:
        futures = {pool.submit(teacher.run, Question.from_row(r), tools, config): r for r in todo}
        for count, future in enumerate(as_completed(futures), start=1):
            row = futures[future]
            try:
                result = future.result()
            except InputError as exc:
                failed.append(row["qid"])
                in_a_row += 1
                print(f"lvr1: error: question {row['qid']}: {exc}", file=sys.stderr, flush=True)
                if in_a_row >= MAX_FAILURES_IN_A_ROW:
                    for f in futures:
                        f.cancel()
                    raise InputError(f"stopping after {in_a_row} questions in a row failed "
                                     f"({len(kept)} trajectories written to {out}; a rerun resumes); last: {exc}") \
                        from None
                continue
            in_a_row = 0
            record = trajectory_record(row, split, name, result)
            played.append(record)
            if keep_wrong or (record["correct"] and not record["hint_leak"]):
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                kept.append(record)
            if progress and (count % max(1, len(todo) // 10) == 0 or count == len(todo)):
                print(f"[lvr1 data] {count}/{len(todo)} questions played, {len(kept)} kept", file=sys.stderr,
                      flush=True)
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
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if sharegpt:
        summary["sharegpt"] = str(sharegpt)
        summary["dataset_info"] = str(write_sharegpt(read_sft_records(out), sharegpt))
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


