"""The OpenAI-compatible SFT teacher on a real corpus: the hint schedule, the dialogue it keeps, the
accounting of tokens and cost, questions played on Ray, and an endpoint that is not there.

Every test talks to a real HTTP server (tests/chat_server.py) whose scripted ``handler`` plays the
student, over the demo corpus captioned into a real caption store.
"""

from __future__ import annotations

import json
import pickle
import re
import socket
from dataclasses import replace

import pytest

from longvideo_r1.agent.episode import Question
from longvideo_r1.agent.llm import OpenAIPolicy
from longvideo_r1.agent.policies import clue_segments
from longvideo_r1.agent.teacher import (
    DEFAULT_HINT_SCHEDULE,
    HintConfig,
    HintedTeacher,
    make_teacher,
)
from longvideo_r1.agent.tools import Tools
from longvideo_r1.agent.video_qa import DemoVideoQA
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.errors import InputError
from longvideo_r1.trainer.sft_data import generate_sft, read_sft_records
from longvideo_r1.trainer.splits import episode_config
from tests.chat_server import ChatServer, Fault

pytestmark = pytest.mark.slow   # captioning the demo corpus into a store takes several seconds

LIMIT = 4   # HintConfig().max_hint_segments


@pytest.fixture(scope="module")
def store_root(demo_store):
    return demo_store


@pytest.fixture(scope="module")
def tools(store_root) -> Tools:
    return Tools(CaptionStore(store_root), DemoVideoQA())


def train_rows(demo_corpus) -> list[dict]:
    return [r for r in demo_corpus.questions() if r["split"] == "train"]


def clue_ids(row: dict, store_root) -> dict[str, list[tuple]]:
    """Every segment of each level that holds the row's clue intervals, in time order."""
    video = CaptionStore(store_root).video(row["video_id"])
    lows = clue_segments(Question.from_row(row), video.width, video.num_frames, video.fps)
    return {"high": list(dict.fromkeys(i[:1] for i in lows)), "medium": list(dict.fromkeys(i[:2] for i in lows)),
            "low": lows}


def fmt(ids) -> str:
    return "(" + ",".join(map(str, ids)) + ")"


def hints_in(messages) -> list[str]:
    """The hint paragraphs of the user turns, in order."""
    return [p for m in messages if m["role"] == "user" for p in m["content"].split("\n\n") if "Hint:" in p]


def named(hint: str, kind: str) -> list[tuple]:
    """The segment ids a hint names, in its order."""
    if kind == "high":
        found = re.search(r"high-level segments? (\d+(?:(?:, | and )\d+)*)", hint)
        return [(int(n),) for n in re.findall(r"\d+", found.group(1))] if found else []
    size = 2 if kind == "medium" else 3
    pattern = r"\((\d+)" + r",(\d+)" * (size - 1) + r"\)"
    return [tuple(map(int, n)) for n in re.findall(pattern, hint)]


def assert_names_the_clue(hint: str, kind: str, row: dict, store_root) -> None:
    """The hint names clue segments of its level: all of them, or ``LIMIT`` spread from the first to the last."""
    level = "low" if kind == "video_qa" else kind
    every = clue_ids(row, store_root)[level]
    ids = named(hint, kind)
    assert every and set(ids) <= set(every), (hint, every)
    assert len(ids) == min(LIMIT, len(every)) and ids[0] == every[0] and ids[-1] == every[-1]
    assert ids == sorted(ids, key=every.index)


def alternates(messages) -> bool:
    roles = [m["role"] for m in messages]
    return roles[:2] == ["system", "user"] and all(
        role == ("assistant" if i % 2 == 0 else "user") for i, role in enumerate(roles[2:]))


class Learner:
    """A scripted chat model: looks at (1,1), then answers wrong until it gets hint ``listen_at`` (a
    kind of the default schedule, or None: never); then reads the first clue clip (and asks video_qa
    about it if that was the hint) and answers right. Stop strings are stripped, as servers do."""

    def __init__(self, rows, store_root, listen_at: str | None = None):
        self.by_question = {r["question"]: r for r in rows}
        self.store_root = store_root
        self.needed = DEFAULT_HINT_SCHEDULE.index(listen_at) + 1 if listen_at else None
        self.listen_at = listen_at

    def row(self, request) -> dict:
        return next(r for q, r in self.by_question.items() if request.messages[1]["content"].startswith(q))

    @staticmethod
    def wrong(row) -> str:
        return next(letter for letter in "ABCD" if letter != row["answer"])

    def __call__(self, request) -> str:
        messages = request.messages
        row = self.row(request)
        said = [m["content"] for m in messages if m["role"] == "assistant"]
        if not said:
            return "<think>The first part is a good place to start.</think><tool>get_caption((1,1))"
        if self.needed is None or len(hints_in(messages)) < self.needed:
            return f"<think>That caption is enough, I think.</think><answer>{self.wrong(row)}"
        clip = clue_ids(row, self.store_root)["low"][0]
        if not any(f"get_caption({fmt(clip)})" in text for text in said):
            return f"<think>This clip should hold the moment.</think><tool>get_caption({fmt(clip)})"
        if self.listen_at == "video_qa" and not any("video_qa(" in text for text in said):
            return (f"<think>The frames will settle what the caption leaves open.</think>"
                    f"<tool>video_qa({fmt(clip)}, \"What signs and words are shown in this clip?\")")
        return f"<think>The clip points to option {row['answer']}.</think><answer>{row['answer']}"


def replay(messages: list[dict], question: Question, tools: Tools, config):
    """Play the assistant turns of ``messages`` as a fresh episode under the RL rules."""
    episode = tools.start(question, config)
    for message in messages[2:]:
        if message["role"] != "assistant":
            continue
        action = episode.submit(message["content"])
        if action.kind in ("get_caption", "video_qa"):
            episode.observe(*tools.run(question.video_id, action))
    return episode


# ---------------------------------------------------------------- the hint schedule

@pytest.mark.parametrize("listen_at", ["low", "video_qa", None])
def test_hints_come_high_medium_low_video_qa_naming_the_clue_and_the_wrong_answer_is_never_shown(
        demo_corpus, store_root, tools, listen_at):
    rows = train_rows(demo_corpus)
    row = rows[0]
    wrong = Learner.wrong(row)
    question = Question.from_row(row)
    with ChatServer(handler=Learner(rows, store_root, listen_at)) as srv:
        result = HintedTeacher(OpenAIPolicy(srv.base_url, "teacher-model"), HintConfig()).run(
            question, tools, episode_config())
        requests = [r.payload["messages"] for r in srv.requests]
    wrong_answers = DEFAULT_HINT_SCHEDULE.index(listen_at) + 1 if listen_at else 5
    kinds = list(DEFAULT_HINT_SCHEDULE[:wrong_answers])
    assert result.hints == kinds and result.attempts == wrong_answers + (listen_at is not None)
    assert result.calls == len(requests) and len(result.wrong_answers) == len(kinds)
    # every request is a valid chat; each hint arrives with the request after a wrong answer, in order,
    # appended to the user turn the model answered after, and names the clue's segments of its level
    given: list[str] = []
    for messages in requests:
        assert alternates(messages) and messages[-1]["role"] == "user"
        hints = hints_in(messages)
        assert hints[:len(given)] == given and len(hints) - len(given) in (0, 1)
        if len(hints) > len(given):
            assert hints[-1] in messages[-1]["content"]
            given.append(hints[-1])
    assert len(given) == len(kinds)
    for hint, kind in zip(given, kinds):
        assert_names_the_clue(hint, kind, row, store_root)
        assert ("video_qa((h, m, l)" in hint) == (kind == "video_qa")
    assert "keep navigating" not in " ".join(given)
    # the wrong answer never reaches the server again, nor does the hint repeat it
    assert not any(f"<answer>{wrong}" in m["content"] for messages in requests for m in messages)
    assert not any(re.search(rf"\b{wrong}\b", hint) for hint in given)
    assert all(f"<answer>{wrong}</answer>" in text for text in result.wrong_answers)
    if listen_at is None:      # five wrong answers: the last one, after the last hint, is final
        assert len(requests) == 6 and result.correct is False and result.episode.answer == wrong
        assert [m["role"] for m in result.episode.messages] == ["system", "user", "assistant", "user", "assistant"]
        return
    # the kept trajectory: no hint, no wrong answer, and it replays under the RL rules
    assert result.correct is True and not result.hint_leak
    cleaned = result.episode.messages
    assert not hints_in(cleaned) and f"<answer>{wrong}" not in str(cleaned) and "earlier attempt" not in str(cleaned)
    assert cleaned == replay(cleaned, question, tools, episode_config()).messages
    calls = [m["content"] for m in cleaned if m["role"] == "assistant"]
    clip = fmt(clue_ids(row, store_root)["low"][0])
    assert calls[0].endswith("get_caption((1,1))</tool>") and calls[1].endswith(f"get_caption({clip})</tool>")
    assert ("video_qa(" in calls[2]) == (listen_at == "video_qa") and calls[-1].endswith(f"<answer>{row['answer']}</answer>")


def test_a_question_without_clue_intervals_gets_plain_retries(demo_corpus, store_root, tools):
    rows = train_rows(demo_corpus)
    question = replace(Question.from_row(rows[0]), clue_intervals=None)
    with ChatServer(handler=Learner(rows, store_root, None)) as srv:
        result = HintedTeacher(OpenAIPolicy(srv.base_url, "m")).run(question, tools, episode_config())
        last = srv.requests[-1].payload["messages"]
    assert result.hints == ["retry"] * 4 and result.attempts == 5 and result.correct is False
    hints = hints_in(last)
    assert len(hints) == 4 and all("keep navigating" in h and not re.search(r"\(\d", h) for h in hints)
    assert not any("segment" in h or "clip" in h for h in hints)


def test_a_missing_answer_gets_the_next_hint_where_rounds_remain(demo_corpus, store_root, tools):
    """Two malformed turns and two tool calls use up 4 rounds without an answer: the malformed turns
    are dropped, which leaves rounds, and the first hint comes after the last observation."""
    rows = train_rows(demo_corpus)
    row = rows[0]

    def handler(request):
        messages = request.messages
        if hints_in(messages):
            return f"<think>The second part settles it.</think><answer>{row['answer']}"
        said = sum(m["role"] == "assistant" for m in messages)
        return ["I am not sure what to do.", "Still unsure.", "<think>Start here.</think><tool>get_caption((1,1))",
                "<think>And here.</think><tool>get_caption((1,2))"][said]

    config = episode_config(max_rounds=4)
    with ChatServer(handler=handler) as srv:
        result = HintedTeacher(OpenAIPolicy(srv.base_url, "m")).run(Question.from_row(row), tools, config)
        requests = [r.payload["messages"] for r in srv.requests]
    assert (result.hints, result.attempts, result.correct, result.invalid_rounds) == (["high"], 1, True, 2)
    hinted = requests[-1]
    assert len(requests) == 5 and alternates(hinted)
    assert [m["content"] for m in hinted if m["role"] == "assistant"] == [
        "<think>Start here.</think><tool>get_caption((1,1))</tool>",
        "<think>And here.</think><tool>get_caption((1,2))</tool>"]          # the malformed turns are gone
    (hint,) = hints_in(hinted)
    assert hinted[-1]["content"].endswith(hint) and hint.startswith("The rounds so far did not reach an answer.")
    assert_names_the_clue(hint, "high", row, store_root)
    assert [m["role"] for m in result.episode.messages].count("assistant") == 3 and not hints_in(result.episode.messages)

    # the same without malformed turns: no round is left, so no hint, and the teacher stops unanswered
    def busy(request):
        said = sum(m["role"] == "assistant" for m in request.messages)
        return f"<think>Look further.</think><tool>get_caption((1,{said % 4 + 1}))"

    with ChatServer(handler=busy) as srv:
        result = HintedTeacher(OpenAIPolicy(srv.base_url, "m")).run(Question.from_row(row), tools, config)
        assert len(srv.requests) == 4
    assert result.hints == [] and result.episode.answer is None and result.correct is False


def test_the_schedule_is_configurable_and_checked():
    assert HintConfig().schedule == ("high", "medium", "low", "video_qa") and HintConfig().max_answers == 5
    assert HintConfig("low,video_qa").schedule == HintConfig(schedule=["low", "video_qa"]).schedule
    assert HintConfig([]).max_answers == 1
    with pytest.raises(InputError, match="'segment' is not a hint kind"):
        HintConfig(["high", "segment"])
    with pytest.raises(InputError, match="max_hint_segments"):
        HintConfig(max_hint_segments=0)


# ---------------------------------------------------------------- what the teacher cost

def test_token_and_cost_totals_are_what_the_server_reported(demo_corpus, store_root, tmp_path):
    rows = train_rows(demo_corpus)
    out = tmp_path / "sft.jsonl"
    with ChatServer(handler=Learner(rows, store_root, "low")) as srv:
        summary = generate_sft(demo_corpus.root, store_root, make_teacher("openai", srv.base_url, "m"), out,
                               price_per_input_token=2e-6, price_per_output_token=8e-6, progress=False)
        reported = [r.usage for r in srv.requests]
    prompt = sum(u["prompt_tokens"] for u in reported)
    completion = sum(u["completion_tokens"] for u in reported)
    assert summary["kept"] == len(rows) and summary["teacher"] == "openai" and summary["ray"] is False
    assert (summary["teacher_calls"], summary["prompt_tokens"], summary["completion_tokens"]) == \
           (len(reported), prompt, completion)
    assert prompt > 0 and completion > 0 and summary["teacher_seconds"] > 0
    assert summary["cost_usd"] == pytest.approx(prompt * 2e-6 + completion * 8e-6)
    records = read_sft_records(out)
    assert {r["teacher"] for r in records} == {"openai"}
    for key in ("calls", "prompt_tokens", "completion_tokens"):
        assert sum(r[key] for r in records) == summary["teacher_calls" if key == "calls" else key]
    assert all(r["calls"] == 6 and r["call_seconds"] > 0 and r["seconds"] >= r["call_seconds"] for r in records)
    # without prices there is no cost; a server that reports no usage counts calls and 0 tokens
    with ChatServer(handler=Learner(rows, store_root, "low"), usage=False) as srv:
        summary = generate_sft(demo_corpus.root, store_root, make_teacher("openai", srv.base_url, "m"),
                               tmp_path / "quiet.jsonl", progress=False)
        assert summary["teacher_calls"] == len(srv.requests) > 0
    assert (summary["prompt_tokens"], summary["completion_tokens"], summary["cost_usd"]) == (0, 0, None)
    with pytest.raises(InputError, match="both price_per_input_token and price_per_output_token"):
        generate_sft(demo_corpus.root, store_root, make_teacher("oracle"), tmp_path / "x.jsonl",
                     price_per_input_token=1e-6)


def test_the_policy_keeps_an_account_per_thread_and_pickles_as_its_settings(demo_corpus, store_root, tools):
    rows = train_rows(demo_corpus)
    with ChatServer(handler=Learner(rows, store_root, "low")) as srv:
        policy = pickle.loads(pickle.dumps(OpenAIPolicy(srv.base_url, "m", api_key="k", max_tokens=77)))
        episode = tools.start(Question.from_row(rows[0]), episode_config())
        policy.act(episode, tools)
        (request,) = srv.requests
    assert request.payload["max_tokens"] == 77 and request.headers["Authorization"] == "Bearer k"
    assert (policy.last_call.calls, policy.last_call.prompt_tokens, policy.last_call.completion_tokens) == \
           (1, request.usage["prompt_tokens"], request.usage["completion_tokens"])
    assert policy.totals == policy.last_call and "k" not in repr(policy)


# ---------------------------------------------------------------- many questions at once, on Ray

def test_questions_run_on_ray_with_at_most_concurrency_in_flight_and_resume(demo_corpus, store_root, tmp_path):
    import ray

    rows = train_rows(demo_corpus)
    assert len(rows) >= 6 and not ray.is_initialized()
    out, sharegpt = tmp_path / "sft.jsonl", tmp_path / "lf" / "sft.json"
    with ChatServer(handler=Learner(rows, store_root, "low"), delay=0.25) as srv:
        teacher = make_teacher("openai", srv.base_url, "m")
        summary = generate_sft(demo_corpus.root, store_root, teacher, out, concurrency=3, video_qa="demo",
                               sharegpt=sharegpt, progress=False)
        assert 1 < srv.max_in_flight <= 3
        calls = len(srv.requests)
        assert not ray.is_initialized()            # the local Ray it started is stopped again
        again = generate_sft(demo_corpus.root, store_root, teacher, out, concurrency=3, progress=False)
        assert len(srv.requests) == calls          # a rerun skips every question written
    assert summary["ray"] is True and summary["concurrency"] == 3
    assert summary["kept"] == summary["played"] == len(rows) and summary["failed"] == 0
    assert summary["teacher_calls"] == calls == 6 * len(rows)
    records = read_sft_records(out)
    assert sorted(r["qid"] for r in records) == sorted(r["qid"] for r in rows)
    assert all(r["hints"] == ["high", "medium", "low"] and r["correct"] and r["calls"] == 6 for r in records)
    assert len(json.loads(sharegpt.read_text())) == len(rows)
    assert (again["played"], again["skipped_existing"]) == (0, len(rows))


def test_on_ray_five_failures_in_a_row_stop_the_run_and_write_nothing(demo_corpus, store_root, tmp_path):
    out = tmp_path / "sft.jsonl"
    with ChatServer(faults=lambda i: Fault(status=400)) as srv, \
            pytest.raises(InputError, match="stopping after 5 questions in a row failed"):
        generate_sft(demo_corpus.root, store_root, make_teacher("openai", srv.base_url, "m"), out, concurrency=3,
                     progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- an endpoint that is not there

@pytest.mark.parametrize("concurrency", [1, 3])
def test_an_unreachable_endpoint_is_a_clear_error_and_writes_nothing(demo_corpus, store_root, tmp_path,
                                                                     concurrency):
    import ray

    with socket.socket() as s:          # a port nothing listens on once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    out = tmp_path / "sft.jsonl"
    with pytest.raises(InputError) as caught:
        generate_sft(demo_corpus.root, store_root, make_teacher("openai", url, "m"), out,
                     concurrency=concurrency, progress=False)
    message = str(caught.value)
    assert url in message and "cannot be reached" in message and "start the OpenAI-compatible server" in message
    assert "\n" not in message and not out.exists() and not ray.is_initialized()


def test_a_backend_that_cannot_travel_to_ray_is_named_before_ray_starts(demo_corpus, store_root, tmp_path):
    import ray

    out = tmp_path / "sft.jsonl"
    with pytest.raises(InputError, match=r"DemoVideoQA cannot be sent to the Ray workers.*as a spec such as"):
        generate_sft(demo_corpus.root, store_root, make_teacher("oracle"), out, concurrency=2,
                     video_qa=DemoVideoQA(), progress=False)
    assert not ray.is_initialized() and not out.exists()
