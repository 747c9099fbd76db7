"""Training data: SFT trajectories from a teacher, verl RL rows, and SFT tokenisation for the learner.

SFT trajectories (``lvr1 data sft``)
------------------------------------
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
template; the exact RL-consistent tokenisation is :func:`tokenize_trajectory`.

RL rows (``lvr1 data rl``)
--------------------------
One verl row per question (PROTOCOL §4): ``data_source``, ``prompt`` (system + first user turn, as
``Tools.start(question, config).prompt()`` builds them), ``ability``, ``reward_model`` and
``extra_info`` (the reward's geometry plus what rebuilds the :class:`Question`), in Parquet.

SFT tokenisation
----------------
:func:`tokenize_trajectory` builds the ids exactly as ``rollout.runner.run_rollouts`` builds a
context (via :class:`~longvideo_r1.rollout.chat.ChatTokens`): the prompt rendered once with the chat
template, then each assistant turn encoded on its own (loss on all of it, ``<think>`` included), then
each observation block (end of turn, observation as a user turn, next generation prompt; no loss).
Rendering the whole conversation with the chat template instead would differ: Qwen3's template drops
``<think>`` from earlier assistant turns. As in the rollouts, the last turn ends with its stop string
(``</answer>``) and no end-of-turn token. ``loss_mask[t] = 1`` means token ``t`` is a training
target (predicted from the tokens before it), the convention of the runner's ``response_mask``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from longvideo_r1.agent.episode import EpisodeConfig, Question
from longvideo_r1.agent.protocol import DEFAULT_SYSTEM_PROMPT
from longvideo_r1.errors import InputError
from longvideo_r1.jsonl import complete_lines, json_lines
from longvideo_r1.rollout.chat import ChatTokens
from longvideo_r1.rollout.runner import RolloutConfig

MAX_ROUNDS = RolloutConfig.max_turns
"""rounds per episode: the RL rollout limit (15), so SFT contexts equal RL contexts"""
ABILITY = "video_navigation"
MAX_FAILURES_IN_A_ROW = 5


def episode_config(max_rounds: int = MAX_ROUNDS, system_template: str = DEFAULT_SYSTEM_PROMPT) -> EpisodeConfig:
    """The episode rules of the RL rollout runner (what both SFT data and RL rows are built with)."""
    if max_rounds < 1:
        raise InputError(f"--max-rounds {max_rounds}: give 1 or more rounds")
    return EpisodeConfig(max_rounds=max_rounds, keep_malformed=True, last_round_note="append",
                         system_template=system_template)


# ====================================================================== the corpus

def load_corpus_split(corpus_dir: str | Path, split: str) -> list[dict]:
    """The rows of ``questions.jsonl`` that belong to ``split`` (by their ``split`` key or ``splits.json``)."""
    root = Path(corpus_dir)
    if not root.is_dir():
        raise InputError(f"corpus {root}: no such folder; make one with `lvr1 corpus demo --out {root}` or give "
                         "a folder holding questions.jsonl (and videos/, splits.json)")
    path = root / "questions.jsonl"
    if not path.is_file():
        raise InputError(f"corpus {root}: no questions.jsonl; a corpus folder holds questions.jsonl, "
                         "splits.json and videos/ (see `lvr1 corpus demo`)")
    splits: dict = {}
    if (root / "splits.json").is_file():
        try:
            splits = json.loads((root / "splits.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"corpus {root}: splits.json is not valid JSON ({exc}); fix or regenerate it") from None
        if not isinstance(splits, dict):
            raise InputError(f"corpus {root}: splits.json must map each split name to a list of video ids")
    rows = []
    for n, row in json_lines(path.read_text(encoding="utf-8"), f"corpus questions {path}", "fix the line"):
        if not isinstance(row, dict) or not row.get("video_id") or not row.get("question"):
            raise InputError(f"corpus questions {path} line {n}: a question needs video_id and question")
        row.setdefault("qid", f"{row['video_id']}:{n}")
        rows.append(row)
    in_split = set(splits.get(split) or [])
    chosen = [r for r in rows if r.get("split", split if r["video_id"] in in_split else None) == split]
    known = list(dict.fromkeys([*splits, *(r["split"] for r in rows if r.get("split"))]))
    if not chosen and split not in known:
        raise InputError(f"split {split!r} is not in corpus {root}: choose one of {', '.join(known) or '(none)'} "
                         "with --split")
    return chosen


def open_tools(store: str | Path, video_ids, video_qa=None):
    """Tools over the caption store; every video in ``video_ids`` must be in it."""
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.corpus.store import CaptionStore

    captions = CaptionStore(store)
    missing = sorted(set(video_ids) - set(captions.video_ids()))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"caption store {store}: lacks video(s) {shown}; caption them first with "
                         f"`lvr1 captions build --videos CORPUS/videos --out {store}`")
    return Tools(captions, video_qa)


# ====================================================================== SFT trajectories

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


# ====================================================================== RL rows

RL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
QUESTION_KEYS = ("video_uid", "qid", "question")
"""extra_info keys that rebuild a :class:`Question` (with ``options`` and ``task_type``, which may be null)"""


def _rl_schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    extra = pa.struct([("index", pa.int64()), ("video_uid", pa.string()), ("split", pa.string()),
                       ("clue_intervals", pa.list_(pa.list_(pa.float64()))), ("width", pa.int64()),
                       ("duration", pa.float64()), ("fps", pa.float64()), ("data_source", pa.string()),
                       ("qid", pa.string()), ("question", pa.string()), ("options", pa.list_(pa.string())),
                       ("task_type", pa.string())])
    return pa.schema([("data_source", pa.string()), ("prompt", pa.list_(message)), ("ability", pa.string()),
                      ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
                      ("extra_info", extra)])


def rl_rows(questions: list[Question], tools, config: EpisodeConfig, split: str,
            data_source: str | None = None) -> list[dict]:
    """One verl row per question (``data_source`` overrides each question's own)."""
    rows = []
    for index, q in enumerate(questions):
        if not q.answer:
            raise InputError(f"question {q.qid}: has no answer; RL rows need the ground-truth letter")
        episode = tools.start(q, config)
        video = tools.captions.video(q.video_id)
        source = data_source or q.data_source
        prompt = [{"role": m["role"], "content": m["content"]} for m in episode.prompt()]
        rows.append({
            "data_source": source, "prompt": prompt, "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": q.answer},
            "extra_info": {"index": index, "video_uid": q.video_id, "split": split,
                           "clue_intervals": [[float(a), float(b)] for a, b in (q.clue_intervals or [])],
                           "width": int(episode.width), "duration": float(episode.duration), "fps": float(video.fps),
                           "data_source": source, "qid": q.qid, "question": q.question,
                           "options": list(q.options) if q.options is not None else None,
                           "task_type": q.task_type},
        })
    return rows


def write_rl_parquet(rows: list[dict], path: str | Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_rl_schema()), tmp)
    os.replace(tmp, path)
    return path


def generate_rl(corpus_dir, store, out, split: str = "train", data_source: str | None = None,
                max_rounds: int = MAX_ROUNDS, system_template: str = DEFAULT_SYSTEM_PROMPT) -> dict:
    t0 = time.perf_counter()
    rows = load_corpus_split(corpus_dir, split)
    tools = open_tools(store, {r["video_id"] for r in rows})
    written = rl_rows([Question.from_row(r) for r in rows], tools, episode_config(max_rounds, system_template),
                      split, data_source)
    write_rl_parquet(written, out)
    sources = sorted({r["data_source"] for r in written})
    return {"out": str(out), "split": split, "rows": len(written), "data_source": sources,
            "seconds": round(time.perf_counter() - t0, 2)}


def read_rl_rows(path: str | Path) -> tuple[list[Question], list[dict]]:
    """The questions of an RL Parquet file (as :func:`write_rl_parquet` writes it) and its raw rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InputError(f"RL data {path}: no such file; make it with `lvr1 data rl --out {path}`")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"RL data {path}: not a readable Parquet file ({str(exc).splitlines()[0][:160]}); "
                         "regenerate it with `lvr1 data rl`") from None
    missing = [c for c in RL_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"RL data {path}: lacks column(s) {', '.join(missing)}; regenerate it with `lvr1 data rl`")
    rows = table.to_pylist()
    questions = []
    for i, row in enumerate(rows):
        extra, reward = row.get("extra_info") or {}, row.get("reward_model") or {}
        lacking = [k for k in QUESTION_KEYS if extra.get(k) is None]
        if lacking:
            raise InputError(f"RL data {path} row {i}: extra_info lacks {', '.join(lacking)}; rows written by "
                             "`lvr1 data rl` carry what rebuilds a question")
        if not reward.get("ground_truth"):
            raise InputError(f"RL data {path} row {i}: reward_model has no ground_truth; regenerate the file "
                             "with `lvr1 data rl`")
        questions.append(Question(extra["video_uid"], extra["question"], extra.get("options"), reward["ground_truth"],
                                  extra.get("clue_intervals") or None, extra["qid"], extra.get("task_type"),
                                  row["data_source"]))
    return questions, rows


# ====================================================================== SFT tokenisation

def _check_messages(messages) -> None:
    if not isinstance(messages, list) or len(messages) < 3:
        raise InputError("trajectory: messages must be a list of system, user, assistant, … turns")
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    if roles[0] != "system" or roles[1] != "user":
        raise InputError(f"trajectory: starts with {roles[:2]}; it must start with a system and a user turn")
    for i, role in enumerate(roles[2:], start=2):
        want = "assistant" if i % 2 == 0 else "user"
        if role != want:
            raise InputError(f"trajectory: message {i} is {role!r}, expected {want!r} (turns alternate)")
        if not isinstance(messages[i].get("content"), str):
            raise InputError(f"trajectory: message {i} has no text content")


def tokenize_trajectory(tokenizer, messages: list[dict], max_tokens: int | None = None,
                        max_observation_tokens: int | None = RolloutConfig.max_observation_tokens) -> dict:
    """``{"input_ids", "loss_mask", "truncated", "prompt_length"}`` of one trajectory, built like a rollout.

    ``tokenizer``: a transformers tokenizer with a chat template, or a :class:`ChatTokens` (reuse one
    across many trajectories). A trailing user turn (no assistant after it) is left out, as the
    runner never appends an observation after the last turn. Longer than ``max_tokens``: cut at the
    end and ``truncated`` is True.
    """
    chat = tokenizer if isinstance(tokenizer, ChatTokens) else ChatTokens(tokenizer)
    _check_messages(messages)
    ids = chat.prompt_ids(messages[:2])
    prompt_length = len(ids)
    mask = [0] * prompt_length
    for i in range(2, len(messages), 2):
        turn = chat.tokenizer.encode(messages[i]["content"], add_special_tokens=False)
        ids += turn
        mask += [1] * len(turn)
        if i + 2 < len(messages):
            block = chat.observation_ids(messages[i + 1]["content"], turn, max_observation_tokens)
            ids += block
            mask += [0] * len(block)
    truncated = max_tokens is not None and len(ids) > max_tokens
    if truncated:
        ids, mask = ids[:max_tokens], mask[:max_tokens]
    return {"input_ids": ids, "loss_mask": mask, "truncated": truncated, "prompt_length": prompt_length}


class SFTDataset:
    """The tokenised trajectories of an ``lvr1 data sft`` JSONL file (a sequence of example dicts).

    Each example: ``input_ids``, ``loss_mask``, ``truncated``, ``qid``, ``video_id``, ``line``.
    ``truncated`` counts examples cut to ``max_tokens``; an example left with no trained token (its
    prompt alone is longer than ``max_tokens``) is dropped and counted in ``dropped``.
    """

    def __init__(self, path: str | Path, tokenizer, max_tokens: int | None = None,
                 max_observation_tokens: int | None = RolloutConfig.max_observation_tokens):
        self.path = Path(path)
        chat = ChatTokens(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.examples: list[dict] = []
        self.truncated = self.dropped = 0
        for record in read_sft_records(self.path):
            try:
                tokens = tokenize_trajectory(chat, record["messages"], max_tokens, max_observation_tokens)
            except InputError as exc:
                raise InputError(f"SFT data {self.path} line {record['_line']}: {exc}") from None
            if not any(tokens["loss_mask"]):
                self.dropped += 1
                continue
            self.truncated += tokens["truncated"]
            self.examples.append({**tokens, "qid": record.get("qid"), "video_id": record.get("video_id"),
                                  "line": record["_line"]})
        if not self.examples:
            raise InputError(f"SFT data {self.path}: no trajectory with a trainable token"
                             + (f" ({self.dropped} prompts longer than max_tokens={max_tokens})" if self.dropped else
                                "; the file is empty"))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]

    def __iter__(self):
        return iter(self.examples)

    def stats(self) -> dict:
        lengths = [len(e["input_ids"]) for e in self.examples]
        return {"examples": len(lengths), "tokens": sum(lengths), "trained_tokens": sum(sum(e["loss_mask"])
                                                                                         for e in self.examples),
                "mean_tokens": _mean(lengths), "max_tokens": max(lengths), "truncated": self.truncated,
                "dropped": self.dropped}


def sft_batches(examples, max_batch_tokens: int, pad_id: int, seed: int = 0, shuffle: bool = True) -> list[dict]:
    """Group examples of similar length into right-padded micro-batches of at most ``max_batch_tokens``
    padded tokens (rows × longest; a longer example gets a batch of its own).

    Examples are sorted by length (ties in a seeded random order) and packed greedily, then the batch
    order is shuffled with ``seed``; ``shuffle=False`` keeps length order. Each batch holds torch
    tensors ``input_ids``, ``attention_mask``, ``loss_mask`` (rows × longest) and ``index`` (positions
    of its examples in ``examples``). The same seed gives the same batches.
    """
    import torch

    if max_batch_tokens < 1:
        raise InputError(f"max_batch_tokens={max_batch_tokens}: give 1 or more")
    examples = list(examples)
    rng = random.Random(seed)
    order = list(range(len(examples)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: len(examples[i]["input_ids"]))
    groups: list[list[int]] = []
    for i in order:
        length = len(examples[i]["input_ids"])
        if groups and length * (len(groups[-1]) + 1) <= max_batch_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    if shuffle:
        rng.shuffle(groups)
    batches = []
    for group in groups:
        longest = max(len(examples[i]["input_ids"]) for i in group)
        input_ids = torch.full((len(group), longest), pad_id, dtype=torch.long)
        attention = torch.zeros((len(group), longest), dtype=torch.long)
        loss_mask = torch.zeros((len(group), longest), dtype=torch.long)
        for row, i in enumerate(group):
            n = len(examples[i]["input_ids"])
            input_ids[row, :n] = torch.tensor(examples[i]["input_ids"], dtype=torch.long)
            attention[row, :n] = 1
            loss_mask[row, :n] = torch.tensor(examples[i]["loss_mask"], dtype=torch.long)
        batches.append({"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask,
                        "index": torch.tensor(group, dtype=torch.long)})
    return batches


def split_validation(examples, fraction: float, seed: int = 0, key=None) -> tuple[list, list]:
    """``(train, validation)``: about ``fraction`` of the examples held out, chosen with ``seed``.

    ``key(example)`` keeps examples with the same key on one side (e.g. ``lambda e: e["video_id"]``
    so no video is in both). At least one example is held out when ``fraction > 0`` and there are two
    or more groups; training keeps at least one. Both lists keep the input order.
    """
    if not 0 <= fraction < 1:
        raise InputError(f"validation fraction {fraction}: give a number in [0, 1)")
    examples = list(examples)
    keys = [key(e) if key else i for i, e in enumerate(examples)]
    groups = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(groups)
    want = round(fraction * len(examples))
    if fraction > 0 and len(groups) > 1:
        want = max(want, 1)
    sizes = Counter(keys)
    held: set = set()
    count = 0
    for g in groups[:-1]:   # the last group always trains
        if count >= want:
            break
        held.add(g)
        count += sizes[g]
    train = [e for e, k in zip(examples, keys) if k not in held]
    val = [e for e, k in zip(examples, keys) if k in held]
    return train, val
