"""SFT tokenisation and batches for the learner.

:func:`tokenize_trajectory` builds the ids exactly as ``rollout.episodes.run_rollouts`` builds a
context (via :class:`~longvideo_r1.rollout.chat.ChatTokens`): the prompt rendered once with the chat
template, then each assistant turn encoded on its own (loss on all of it, ``<think>`` included), then
each observation block (end of turn, observation as a user turn, next generation prompt; no loss).
Rendering the whole conversation with the chat template instead would differ: Qwen3's template drops
``<think>`` from earlier assistant turns. As in the rollouts, the last turn ends with its stop string
(``</answer>``) and no end-of-turn token. ``loss_mask[t] = 1`` means token ``t`` is a training
target (predicted from the tokens before it), the convention of the runner's ``response_mask``.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from longvideo_r1.errors import InputError
from longvideo_r1.rollout.chat import ChatTokens
from longvideo_r1.rollout.episodes import RolloutConfig
from longvideo_r1.trainer.sft_data import read_sft_records


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
                "mean_tokens": round(sum(lengths) / len(lengths), 2) if lengths else 0.0, "max_tokens": max(lengths), "truncated": self.truncated,
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
