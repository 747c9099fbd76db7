"""Training data: teacher trajectories (oracle and a hinted chat model), verl RL rows, SFT tokenisation.

Everything runs on the demo corpus and its demo caption store, the real Qwen3 tokenizer, the real
rollout runner (fed the teacher's turns by a replaying engine) and a real chat server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longvideo_r1.agent.episode import Question
from longvideo_r1.agent.llm import OpenAIPolicy
from longvideo_r1.agent.policies import clue_segments
from longvideo_r1.agent.protocol import LAST_ROUND_NOTE, STOP_STRINGS
from longvideo_r1.agent.teacher import (
    HintConfig,
    HintedTeacher,
    OracleTeacher,
    make_teacher,
)
from longvideo_r1.agent.tools import Tools
from longvideo_r1.agent.video_qa import DemoVideoQA
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.errors import InputError
from longvideo_r1.platform.cli import main
from longvideo_r1.rollout.chat import ChatTokens
from longvideo_r1.rollout.engine import EngineStats, Generation
from longvideo_r1.rollout.episodes import RolloutConfig, run_rollouts
from longvideo_r1.trainer.batches import (
    SFTDataset,
    sft_batches,
    split_validation,
    tokenize_trajectory,
)
from longvideo_r1.trainer.rl_data import read_rl_rows
from longvideo_r1.trainer.sft_data import generate_sft, read_sft_records
from longvideo_r1.trainer.splits import episode_config
from tests.chat_server import ChatServer, Fault

pytestmark = pytest.mark.slow   # captioning the demo corpus into a store takes several seconds


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def store_root(demo_store):
    return demo_store


@pytest.fixture(scope="module")
def tools(store_root) -> Tools:
    return Tools(CaptionStore(store_root), DemoVideoQA())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from longvideo_r1.models import qwen3_tokenizer_dir

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir())


def run_cli(*args) -> tuple[int, dict | None, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    text = out.getvalue().strip()
    return rc, (json.loads(text) if text else None), err.getvalue()


@pytest.fixture(scope="module")
def oracle_sft(demo_corpus, store_root, tmp_path_factory):
    """`lvr1 data sft --teacher oracle` on the train split, with a LLaMA-Factory copy."""
    folder = tmp_path_factory.mktemp("sft")
    out, sharegpt = folder / "sft.jsonl", folder / "lf" / "lvr1_sft.json"
    rc, summary, err = run_cli("data", "sft", "--corpus", demo_corpus.root, "--store", store_root, "--teacher",
                               "oracle", "--out", out, "--sharegpt", sharegpt)
    assert rc == 0, err
    return out, sharegpt, summary


def split_rows(demo_corpus, split="train") -> list[dict]:
    return [r for r in demo_corpus.questions() if r["split"] == split]


def assistant_texts(messages) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


# ---------------------------------------------------------------- oracle SFT trajectories

def test_oracle_sft_writes_one_correct_rl_shaped_trajectory_per_question(oracle_sft, demo_corpus, tools):
    out, _, summary = oracle_sft
    rows = split_rows(demo_corpus)
    records = read_sft_records(out)
    assert summary["questions"] == summary["played"] == summary["kept"] == len(records) == len(rows) > 0
    assert summary["correct_rate"] == 1.0 and summary["failed"] == 0 and summary["mean_rounds"] > 2
    assert summary["get_caption_per_trajectory"] > 0 and summary["seconds"] >= 0
    by_qid = {r["qid"]: r for r in rows}
    for record in records:
        row = by_qid[record["qid"]]
        assert (record["video_id"], record["split"], record["task_type"], record["teacher"]) == \
               (row["video_id"], "train", row["task_type"], "oracle")
        assert record["correct"] is True and record["answer"] == row["answer"] and record["hints"] == []
        messages = record["messages"]
        # the prompt is exactly the RL rollout prompt: same rules, same system prompt and first turn
        assert messages[:2] == tools.start(Question.from_row(row), episode_config()).prompt()
        roles = [m["role"] for m in messages]
        assert roles == ["system", "user"] + ["assistant", "user"] * (record["rounds"] - 1) + ["assistant"]
        assert messages[-1]["content"].endswith(f"<answer>{row['answer']}</answer>")
        assert record["costs"]["rounds"] == record["rounds"]
        assert record["costs"]["get_caption_calls"] + record["costs"]["video_qa_calls"] == record["rounds"] - 1


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def test_no_oracle_trajectory_states_a_hidden_clue_time(oracle_sft, demo_corpus):
    rows = {r["qid"]: r for r in demo_corpus.questions()}
    for record in read_sft_records(oracle_sft[0]):
        clue_times = {float(t) for pair in rows[record["qid"]]["clue_intervals"] for t in pair}
        messages = record["messages"]
        shown = {float(n) for m in messages[:2] for n in NUMBER.findall(m["content"])}
        for i in range(2, len(messages)):
            numbers = {float(n) for n in NUMBER.findall(messages[i]["content"])}
            if messages[i]["role"] == "assistant":
                leaked = numbers & (clue_times - shown)
                assert not leaked, f"{record['qid']} states hidden clue time(s) {leaked}: {messages[i]['content']}"
            else:
                shown |= numbers


def test_a_rerun_skips_written_questions_and_recovers_a_half_written_line(oracle_sft, demo_corpus, store_root,
                                                                          tmp_path):
    out = tmp_path / "sft.jsonl"
    lines = oracle_sft[0].read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-1]) + lines[-1][:50])       # a crash in the middle of the last line
    rc, summary, err = run_cli("data", "sft", "--corpus", demo_corpus.root, "--store", store_root, "--out", out)
    assert rc == 0, err
    assert (summary["skipped_existing"], summary["played"], summary["kept"]) == (len(lines) - 1, 1, 1)
    again = read_sft_records(out)
    assert [r["qid"] for r in again] == [json.loads(ln)["qid"] for ln in lines]
    rc, summary, _ = run_cli("data", "sft", "--corpus", demo_corpus.root, "--store", store_root, "--out", out)
    assert rc == 0 and summary["played"] == 0 and summary["skipped_existing"] == len(lines)


def test_the_sharegpt_copy_and_its_dataset_info_entry(oracle_sft):
    out, sharegpt, summary = oracle_sft
    data = json.loads(sharegpt.read_text())
    records = read_sft_records(out)
    assert len(data) == len(records)
    for item, record in zip(data, records):
        assert item["system"] == record["messages"][0]["content"]
        turns = item["conversations"]
        assert len(turns) % 2 == 0 and [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert [t["value"] for t in turns] == [m["content"] for m in record["messages"][1:]]
    info = json.loads((sharegpt.parent / "dataset_info.json").read_text())
    assert summary["dataset_info"] == str(sharegpt.parent / "dataset_info.json")
    assert info == {"lvr1_sft": {"file_name": "lvr1_sft.json", "formatting": "sharegpt",
                                 "columns": {"messages": "conversations", "system": "system"},
                                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                          "assistant_tag": "gpt"}}}


# ---------------------------------------------------------------- the hinted chat-model teacher
# (the full hint schedule, accounting, Ray and an unreachable endpoint: tests/test_teacher.py)

def clue_ids(row, store_root):
    video = CaptionStore(store_root).video(row["video_id"])
    lows = clue_segments(Question.from_row(row), video.width, video.num_frames, video.fps)
    return list(dict.fromkeys(ids[:2] for ids in lows)), lows


def fmt(ids) -> str:
    return "(" + ",".join(map(str, ids)) + ")"


def hints_in(messages) -> list[str]:
    """The hint paragraphs of the user turns, in order."""
    return [p for m in messages if m["role"] == "user" for p in m["content"].split("\n\n") if "Hint:" in p]


class Student:
    """Scripted chat replies (stop strings stripped, as servers do) keyed on what the request holds:
    a first look at (1,1), ``wrong_times`` wrong answers (one per hint), the clue's first medium
    segment once hinted, then the right answer."""

    def __init__(self, rows, store_root, wrong_times=1, leak=False):
        self.by_question = {r["question"]: r for r in rows}
        self.store_root = store_root
        self.wrong_times = wrong_times
        self.leak = leak

    def __call__(self, request) -> str:
        messages = request.messages
        row = next(r for q, r in self.by_question.items() if messages[1]["content"].startswith(q))
        wrong = next(letter for letter in "ABCD" if letter != row["answer"])
        if not any(m["role"] == "assistant" for m in messages):
            return "<think>The first part is a good place to start.</think><tool>get_caption((1,1))"
        if len(hints_in(messages)) < self.wrong_times:
            return f"<think>That caption is enough, I think.</think><answer>{wrong}"
        if "Hint:" in messages[-1]["content"]:     # just hinted: go there
            medium = clue_ids(row, self.store_root)[0][0]
            why = "The hint says so." if self.leak else "This part should hold the moment."
            return f"<think>{why}</think><tool>get_caption({fmt(medium)})"
        return f"<think>The captions point to option {row['answer']}.</think><answer>{row['answer']}"


def test_a_wrong_answer_gets_a_high_level_hint_and_the_cleaned_path_is_written(demo_corpus, store_root, tmp_path):
    rows = split_rows(demo_corpus)
    out = tmp_path / "sft.jsonl"
    with ChatServer(handler=Student(rows, store_root), api_key="sekret") as srv:
        teacher = make_teacher("openai", srv.base_url, "teacher-model", api_key="sekret")
        summary = generate_sft(demo_corpus.root, store_root, teacher, out, concurrency=2, use_ray=False,
                               progress=False)
        requests = [r.payload for r in srv.requests]
    assert summary["kept"] == summary["played"] == len(rows) and summary["hinted"] == len(rows)
    assert summary["mean_attempts"] == 2.0 and summary["correct_rate"] == 1.0 and summary["teacher"] == "openai"
    assert summary["teacher_calls"] == len(requests) == 4 * len(rows)
    assert all(r["stop"] == list(STOP_STRINGS) for r in requests)
    records = {r["qid"]: r for r in read_sft_records(out)}
    for row in rows:
        mediums, lows = clue_ids(row, store_root)
        highs = list(dict.fromkeys(ids[:1] for ids in lows))
        wrong = next(letter for letter in "ABCD" if letter != row["answer"])
        mine = [r["messages"] for r in requests if r["messages"][1]["content"].startswith(row["question"])]
        assert len(mine) == 4
        # the wrong answer is taken out: the hinted request is the one before it plus the hint, appended
        # to the observation the model answered after; the wrong answer is in no request
        assert mine[2][:3] == mine[1][:3] and len(mine[2]) == len(mine[1]) == 4
        assert mine[2][3]["content"].startswith(mine[1][3]["content"] + "\n\n")
        assert [m["role"] for m in mine[2]] == ["system", "user", "assistant", "user"]
        assert not any(f"<answer>{wrong}" in m["content"] for msgs in mine for m in msgs)
        (hint,) = hints_in(mine[2])
        assert f"{wrong}" not in re.findall(r"\b[A-D]\b", hint) and "video_qa" not in hint
        named = re.search(r"high-level segments? (\d+(?:(?:, | and )\d+)*)", hint).group(1)
        assert [int(n) for n in re.findall(r"\d+", named)] == [h for (h,) in highs]   # a width-4 tree: <= 4
        # what was written: the hint-free path (both tool calls, the right answer), rebuilt by the rules
        record = records[row["qid"]]
        assert (record["correct"], record["attempts"], record["hints"], record["hint_leak"], record["teacher"]) == \
               (True, 2, ["high"], False, "openai")
        assert record["calls"] == 4 and record["prompt_tokens"] > 0 and record["completion_tokens"] > 0
        assert assistant_texts(record["messages"]) == [
            "<think>The first part is a good place to start.</think><tool>get_caption((1,1))</tool>",
            f"<think>This part should hold the moment.</think><tool>get_caption({fmt(mediums[0])})</tool>",
            f"<think>The captions point to option {row['answer']}.</think><answer>{row['answer']}</answer>"]
        text = json.dumps(record["messages"])
        assert "Hint" not in text and "earlier attempt" not in text and f"<answer>{wrong}" not in text
        assert record["messages"][3]["content"].startswith("Medium-level Caption from tool get_caption((1,1))")
        assert record["rounds"] == 3 and record["costs"]["get_caption_calls"] == 2


def test_repeated_failures_go_through_the_schedule_then_the_teacher_gives_up(demo_corpus, store_root, tools):
    rows = split_rows(demo_corpus)
    row = rows[0]
    mediums, lows = clue_ids(row, store_root)
    with ChatServer(handler=Student(rows, store_root, wrong_times=99)) as srv:
        teacher = HintedTeacher(OpenAIPolicy(srv.base_url, "m"), HintConfig(["medium", "video_qa"]))
        result = teacher.run(Question.from_row(row), tools, episode_config())
        requests = [r.payload["messages"] for r in srv.requests]
    assert (result.attempts, result.hints, result.correct) == (3, ["medium", "video_qa"], False)
    assert len(requests) == 4 and [len(hints_in(m)) for m in requests] == [0, 0, 1, 2]
    first, second = hints_in(requests[-1])
    assert {tuple(map(int, n)) for n in re.findall(r"\((\d+),(\d+)\)", first)} <= set(mediums)
    assert fmt(mediums[0]) in first and "video_qa" not in first
    named = {tuple(map(int, n)) for n in re.findall(r"\((\d+),(\d+),(\d+)\)", second)}
    assert "video_qa(" in second and lows[0] in named and named <= set(lows)
    # the dialogue holds both hints and none of the wrong answers but the last (final) one; the cleaned
    # episode has no hint and ends with that last wrong answer
    assert len(hints_in(result.transcript)) == 2 and len(result.wrong_answers) == 2
    assert sum("<answer>" in m["content"] for m in result.transcript if m["role"] == "assistant") == 1
    assert not hints_in(result.episode.messages)
    assert result.episode.answer != row["answer"] and len(result.episode.turns) == 2


def test_wrong_and_leaking_trajectories_are_dropped_unless_asked(demo_corpus, store_root, tmp_path):
    rows = split_rows(demo_corpus)
    with ChatServer(handler=Student(rows, store_root)) as srv:
        no_hints = make_teacher("openai", srv.base_url, "m", hints=HintConfig([]))
        summary = generate_sft(demo_corpus.root, store_root, no_hints, tmp_path / "a.jsonl", progress=False)
        assert (summary["kept"], summary["dropped_wrong"], summary["hinted"]) == (0, len(rows), 0)
        assert not (tmp_path / "a.jsonl").exists()          # nothing kept, no file
        summary = generate_sft(demo_corpus.root, store_root, no_hints, tmp_path / "b.jsonl", keep_wrong=True,
                               progress=False)
        assert summary["kept"] == len(rows)
        assert all(r["correct"] is False for r in read_sft_records(tmp_path / "b.jsonl"))
    with ChatServer(handler=Student(rows, store_root, leak=True)) as srv:
        summary = generate_sft(demo_corpus.root, store_root, make_teacher("openai", srv.base_url, "m"),
                               tmp_path / "c.jsonl", progress=False)
        assert (summary["kept"], summary["dropped_hint_leak"]) == (0, len(rows))


def test_a_failing_question_is_reported_and_many_in_a_row_stop_the_run(demo_corpus, store_root, tmp_path):
    rows = split_rows(demo_corpus)
    args = ["data", "sft", "--corpus", demo_corpus.root, "--store", store_root, "--teacher", "openai", "--model", "m"]
    with ChatServer(handler=Student(rows, store_root), faults=[Fault(status=400)]) as srv:
        rc, summary, err = run_cli(*args, "--endpoint", srv.base_url, "--out", tmp_path / "a.jsonl")
    assert rc == 1 and (summary["failed"], summary["kept"]) == (1, len(rows) - 1)
    errors = [ln for ln in err.splitlines() if ln.startswith("lvr1: error:")]
    assert len(errors) == 1 and f"question {rows[0]['qid']}" in errors[0] and "HTTP 400" in errors[0]
    assert summary["teacher_calls"] == 4 * (len(rows) - 1)     # the failed call is not counted
    with ChatServer(faults=lambda i: Fault(status=400)) as srv:
        rc, summary, err = run_cli(*args, "--endpoint", srv.base_url, "--out", tmp_path / "b.jsonl")
    assert rc == 2 and summary is None and "stopping after 5 questions in a row failed" in err.splitlines()[-1]
    assert not (tmp_path / "b.jsonl").exists()


# ---------------------------------------------------------------- tokenisation equals the rollout context

class ReplayEngine:
    """An engine that 'samples' the given turns' tokens and records every context it is fed."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer = tokenizer
        self.version = 0
        self.stats = EngineStats()
        self.turns = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
        self.prompts: list[list[int]] = []

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            ids = self.turns[len(self.prompts)]
            self.prompts.append(list(prompt))
            out.append(Generation(list(ids), [0.0] * len(ids), "stop"))
        return out


@pytest.fixture(scope="module")
def trajectories(demo_corpus, tools):
    """Oracle trajectories under the RL rules: a long one with video_qa, a short one, and one that
    reaches the last round (4 rounds: the note is appended to the last observation)."""
    rows = split_rows(demo_corpus)
    detail = next(r for r in rows if r["task_type"] == "after_dialogue")
    other = next(r for r in rows if r["task_type"] in ("count", "event_order"))
    teacher = OracleTeacher()
    out = []
    for row, rounds in ((detail, 15), (other, 15), (detail, 4)):
        result = teacher.run(Question.from_row(row), tools, episode_config(rounds))
        out.append((row, rounds, result.episode.messages))
    assert out[0][2] != out[2][2] and LAST_ROUND_NOTE in out[2][2][-2]["content"]
    assert any("video_qa(" in m["content"] for m in out[0][2] if m["role"] == "assistant")
    return out


def test_tokenized_trajectories_are_exactly_the_rollout_runner_contexts(trajectories, tokenizer, tools):
    chat = ChatTokens(tokenizer)
    for row, rounds, messages in trajectories:
        tokens = tokenize_trajectory(chat, messages)
        engine = ReplayEngine(tokenizer, assistant_texts(messages))
        [episode] = run_rollouts(engine, tools, [Question.from_row(row)], RolloutConfig(n=1, max_rounds=rounds))
        assert episode.trace["messages"] == messages           # the runner played the same episode
        assert tokens["input_ids"] == episode.prompt_ids + episode.response_ids
        assert tokens["loss_mask"] == [0] * len(episode.prompt_ids) + episode.response_mask
        assert tokens["prompt_length"] == len(episode.prompt_ids) and not tokens["truncated"]
        # every context the model was fed is the trajectory's prefix right before one of its turns
        for prompt in engine.prompts:
            assert tokens["input_ids"][: len(prompt)] == prompt and tokens["loss_mask"][len(prompt)] == 1
            assert tokens["loss_mask"][len(prompt) - 1] == 0


def test_the_loss_covers_exactly_the_assistant_turns_think_included(trajectories, tokenizer):
    for _, _, messages in trajectories:
        tokens = tokenize_trajectory(tokenizer, messages)
        ids, mask = tokens["input_ids"], tokens["loss_mask"]
        masked = [t for t, m in zip(ids, mask) if m]
        assert tokenizer.decode(masked) == "".join(assistant_texts(messages))
        runs = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        assert runs == len(assistant_texts(messages))
        assert "<think>" in tokenizer.decode(masked)
        # cut short: the same prefix, flagged
        cut = tokenize_trajectory(tokenizer, messages, max_tokens=len(ids) - 7)
        assert cut["truncated"] and cut["input_ids"] == ids[:-7] and cut["loss_mask"] == mask[:-7]
        assert not tokenize_trajectory(tokenizer, messages, max_tokens=len(ids))["truncated"]


def test_a_conversation_that_does_not_alternate_is_refused(tokenizer):
    with pytest.raises(InputError, match="message 3"):
        tokenize_trajectory(tokenizer, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                        {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}])


# ---------------------------------------------------------------- dataset, batches, validation split

def test_the_sft_dataset_and_its_length_grouped_batches(oracle_sft, tokenizer):
    data = SFTDataset(oracle_sft[0], tokenizer, max_tokens=4096)
    records = read_sft_records(oracle_sft[0])
    assert len(data) == len(records) and data[0]["input_ids"] == tokenize_trajectory(
        tokenizer, records[0]["messages"], 4096)["input_ids"]
    lengths = [len(e["input_ids"]) for e in data]
    budget = 2 * max(lengths)
    batches = sft_batches(data, budget, pad_id=data.pad_id, seed=3)
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(data)))
    assert len(batches) < len(data)            # some batches hold several rows
    for b in batches:
        rows, width = b["input_ids"].shape
        assert rows * width <= budget or rows == 1
        for row, i in enumerate(b["index"].tolist()):
            n = len(data[i]["input_ids"])
            assert width == max(len(data[j]["input_ids"]) for j in b["index"].tolist())
            assert b["input_ids"][row, :n].tolist() == data[i]["input_ids"]
            assert b["loss_mask"][row, :n].tolist() == data[i]["loss_mask"]
            assert b["attention_mask"][row].sum() == n and b["loss_mask"][row, n:].sum() == 0
            assert (b["input_ids"][row, n:] == data.pad_id).all()
    again = sft_batches(data, budget, pad_id=data.pad_id, seed=3)
    assert all((a["input_ids"] == b["input_ids"]).all() and (a["index"] == b["index"]).all()
               for a, b in zip(batches, again))
    one = sft_batches(data, 1, pad_id=data.pad_id, shuffle=False)     # every example alone, shortest first
    assert [len(b["index"]) for b in one] == [1] * len(data)
    assert [b["input_ids"].shape[1] for b in one] == sorted(lengths)
    small = SFTDataset(oracle_sft[0], tokenizer, max_tokens=min(lengths) - 5)
    assert small.truncated == len(small) and small.stats()["max_tokens"] == min(lengths) - 5


def test_split_validation_is_deterministic_and_keeps_groups_together():
    examples = [{"i": i, "video_id": f"v{i % 5}"} for i in range(40)]
    train, val = split_validation(examples, 0.25, seed=1)
    assert len(val) == 10 and len(train) == 30 and sorted(e["i"] for e in train + val) == list(range(40))
    assert split_validation(examples, 0.25, seed=1) == (train, val)
    assert split_validation(examples, 0.25, seed=2) != (train, val)
    train, val = split_validation(examples, 0.25, seed=1, key=lambda e: e["video_id"])
    assert not {e["video_id"] for e in train} & {e["video_id"] for e in val} and val and train
    assert split_validation(examples[:1], 0.5, seed=0) == (examples[:1], [])


def test_a_malformed_sft_line_is_named(tmp_path, oracle_sft, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(oracle_sft[0].read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(InputError, match=rf"{re.escape(str(path))} line 2: not valid JSON"):
        SFTDataset(path, tokenizer)
    path.write_text('{"qid": "x", "messages": [{"role": "system", "content": "s"}]}\n')
    with pytest.raises(InputError, match="line 1: needs \"messages\""):
        SFTDataset(path, tokenizer)
    with pytest.raises(InputError, match="no such file"):
        SFTDataset(tmp_path / "missing.jsonl", tokenizer)


# ---------------------------------------------------------------- RL rows

def test_rl_rows_have_the_verl_schema_and_rebuild_the_questions(demo_corpus, store_root, tools, tmp_path):
    from longvideo_r1.reward.score import compute_score

    out = tmp_path / "rl.parquet"
    rc, summary, err = run_cli("data", "rl", "--corpus", demo_corpus.root, "--store", store_root, "--out", out,
                               "--split", "val")
    rows = split_rows(demo_corpus, "val")
    assert rc == 0 and summary["rows"] == len(rows) > 0, err
    table = pq.read_table(out)
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    questions, written = read_rl_rows(out)
    for index, (row, q, w) in enumerate(zip(rows, questions, written)):
        expected = Question.from_row(row)
        assert q == expected
        assert w["prompt"] == tools.start(expected, episode_config()).prompt()
        assert (w["data_source"], w["ability"], w["reward_model"]) == \
               ("lvr1_demo", "video_navigation", {"style": "rule", "ground_truth": row["answer"]})
        video = tools.captions.video(row["video_id"])
        assert w["extra_info"] == {"index": index, "video_uid": row["video_id"], "split": "val",
                                   "clue_intervals": row["clue_intervals"], "width": video.width,
                                   "duration": video.duration, "fps": video.fps, "data_source": "lvr1_demo",
                                   "qid": row["qid"], "question": row["question"], "options": row["options"],
                                   "task_type": row["task_type"]}
        score = compute_score(w["data_source"], f"<answer>{row['answer']}</answer>",
                              w["reward_model"]["ground_truth"], w["extra_info"])
        assert score["answer_reward"] == 1.0
    rc, _, _ = run_cli("data", "rl", "--corpus", demo_corpus.root, "--store", store_root, "--out", out,
                       "--data-source", "videocaption_cgbench")
    assert rc == 0 and {w["data_source"] for w in read_rl_rows(out)[1]} == {"videocaption_cgbench"}


def test_unreadable_rl_files_are_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_rl_rows(tmp_path / "none.parquet")
    (tmp_path / "text.parquet").write_text("hello")
    with pytest.raises(InputError, match=r"text\.parquet: not a readable Parquet file"):
        read_rl_rows(tmp_path / "text.parquet")
    pq.write_table(pa.table({"data_source": ["x"], "prompt": ["p"]}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match=r"cols\.parquet: lacks column\(s\) ability, reward_model, extra_info"):
        read_rl_rows(tmp_path / "cols.parquet")


# ---------------------------------------------------------------- bad command lines

@pytest.mark.parametrize("args, needles", [
    (("sft", "--corpus", "{tmp}/nope", "--store", "{store}", "--out", "{tmp}/o.jsonl"),
     ("{tmp}/nope", "lvr1 corpus demo")),
    (("rl", "--corpus", "{tmp}/nope", "--store", "{store}", "--out", "{tmp}/o.parquet"), ("{tmp}/nope",)),
    (("sft", "--corpus", "{corpus}", "--store", "{store}", "--split", "dev", "--out", "{tmp}/o.jsonl"),
     ("'dev'", "train, val, test")),
    (("rl", "--corpus", "{corpus}", "--store", "{tmp}/nostore", "--out", "{tmp}/o.parquet"),
     ("{tmp}/nostore", "lvr1 captions build")),
    (("sft", "--corpus", "{corpus}", "--store", "{store}", "--teacher", "openai", "--out", "{tmp}/o.jsonl"),
     ("--endpoint", "--model")),
    (("sft", "--corpus", "{corpus}", "--store", "{store}", "--teacher", "openai", "--endpoint", "http://x",
      "--model", "m", "--api-key-env", "LVR1_NO_SUCH_VAR", "--out", "{tmp}/o.jsonl"), ("LVR1_NO_SUCH_VAR",)),
])
def test_bad_inputs_exit_2_with_one_line(demo_corpus, store_root, tmp_path, args, needles):
    fill = {"tmp": tmp_path, "store": store_root, "corpus": demo_corpus.root}
    rc, out, err = run_cli("data", *[a.format(**fill) for a in args])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and out is None and len(lines) == 1 and lines[0].startswith("lvr1: error: "), err
    for needle in needles:
        assert needle.format(**fill) in lines[0]
