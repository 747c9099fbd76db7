"""The baseline navigators on the demo corpus: each plays whole episodes by the rules and does what it
claims (read everything, read at random, read the most similar clips, walk to the clues)."""

from __future__ import annotations

import re

import pytest

from longvideo_r1.agent.episode import Question
from longvideo_r1.agent.policies import ExhaustivePolicy, OraclePolicy, RandomPolicy, RetrievalPolicy
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.agent.video_qa import DemoVideoQA
from longvideo_r1.corpus import tree
from longvideo_r1.corpus.store import CaptionStore

# Captioning the three demo videos takes several seconds, and everything here runs on that store.
pytestmark = pytest.mark.slow

RANDOM_CALLS = 7
RETRIEVAL_K = 3
ORACLE_TARGETS = 6


@pytest.fixture(scope="module")
def store(demo_store) -> CaptionStore:
    return CaptionStore(demo_store)


@pytest.fixture(scope="module")
def tools(store) -> Tools:
    return Tools(store, DemoVideoQA())


@pytest.fixture(scope="module")
def questions(demo_corpus) -> dict[str, list[Question]]:
    rows = demo_corpus.questions()
    everything = [Question.from_row(r) for r in rows]
    return {"test": [q for q, r in zip(everything, rows) if r["split"] == "test"], "all": everything}


POLICIES = {
    "exhaustive": ExhaustivePolicy,
    "random": lambda: RandomPolicy(calls=RANDOM_CALLS, seed=3),
    "retrieval": lambda: RetrievalPolicy(k=RETRIEVAL_K),
    "oracle_truth": lambda: OraclePolicy(answer_from="truth", max_targets=ORACLE_TARGETS),
    "oracle_evidence": lambda: OraclePolicy(answer_from="evidence", max_targets=ORACLE_TARGETS),
}


@pytest.fixture(scope="module")
def episodes(tools, questions):
    """``episodes(policy, split)``: every question of the split played to the end, once per module."""
    played = {}

    def get(policy: str, split: str = "test"):
        if (policy, split) not in played:
            navigator = POLICIES[policy]()
            played[policy, split] = [run_episode(navigator, q, tools) for q in questions[split]]
        return played[policy, split]

    return get


def accuracy(episodes) -> float:
    return sum(bool(e.correct) for e in episodes) / len(episodes)


def medium_and_low_ids(width: int) -> list[tuple[int, ...]]:
    return [ids for ids in tree.all_ids(width) if len(ids) in (2, 3)]


# ---------------------------------------------------------------- every baseline

@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_baseline_plays_every_test_question_to_an_answer_without_breaking_a_rule(episodes, questions,
                                                                                        policy):
    played = episodes(policy)
    assert len(played) == len(questions["test"]) > 0
    for episode in played:
        assert episode.done and episode.answer in ("A", "B", "C", "D"), episode.turns[-1].text
        assert episode.costs.invalid_rounds == 0, [t.action.message for t in episode.turns if t.dropped]


# ---------------------------------------------------------------- exhaustive

def test_exhaustive_reads_every_medium_and_low_caption_exactly_once(episodes):
    for episode in episodes("exhaustive"):
        expected = medium_and_low_ids(episode.width)
        assert len(episode.visited) == len(set(episode.visited)) == len(expected)
        assert set(episode.visited) == set(expected)
        assert episode.costs.video_qa_calls == 0


# ---------------------------------------------------------------- random

def test_random_makes_exactly_its_number_of_distinct_calls(episodes):
    for episode in episodes("random"):
        assert len(episode.visited) == len(set(episode.visited)) == RANDOM_CALLS
        assert set(episode.visited) <= set(medium_and_low_ids(episode.width))
        assert episode.costs.get_caption_calls == RANDOM_CALLS and episode.costs.video_qa_calls == 0


# ---------------------------------------------------------------- retrieval

def test_retrieval_reads_k_low_clips_and_asks_video_qa_on_each_after_reading_it(episodes):
    for episode in episodes("retrieval"):
        assert (episode.costs.get_caption_calls, episode.costs.video_qa_calls) == (RETRIEVAL_K, RETRIEVAL_K)
        assert len(set(episode.visited)) == RETRIEVAL_K and all(len(ids) == 3 for ids in episode.visited)
        read = []
        for turn in episode.turns:
            if turn.action.kind == "get_caption":
                read.append(turn.action.ids)
            elif turn.action.kind == "video_qa":
                assert turn.action.ids in read, f"video_qa on {turn.action.ids} before reading it"
        assert sorted(episode.video_qa_segments) == sorted(episode.visited)


# ---------------------------------------------------------------- oracle

def clue_lows(question: Question, video) -> set[tuple[int, int, int]]:
    """Low segments whose frames (part start to one past its last frame) overlap a clue interval."""
    found = set()
    for index, part in enumerate(tree.level_parts(video.num_frames, video.width, "low")):
        start, end = part[0] / video.fps, (part[-1] + 1) / video.fps
        if any(min(end, b) > max(start, a) for a, b in question.clue_intervals):
            found.add(tree.ids_from_flat("low", index, video.width))
    return found


def test_the_oracle_with_the_truth_is_always_correct(episodes):
    assert all(e.correct for e in episodes("oracle_truth"))


def test_the_oracle_reads_the_low_segments_of_the_clues_top_down(episodes, store):
    for episode in episodes("oracle_truth"):
        q = episode.question
        video = store.video(q.video_id)
        targets = clue_lows(q, video)
        lows = [ids for ids in episode.visited if len(ids) == 3]
        assert lows and set(lows) <= targets
        if len(targets) <= ORACLE_TARGETS:
            assert set(lows) == targets
        for a, b in q.clue_intervals:  # every clue is reached, even when there are too many targets
            assert any(ids in clue_lows(Question(q.video_id, "", clue_intervals=[[a, b]]), video) for ids in lows)
        for i, ids in enumerate(episode.visited):  # each low caption after its medium one
            if len(ids) == 3:
                assert ids[:2] in episode.visited[:i]


NUMBER = re.compile(r"\d+(?:\.\d+)?")
TIME = re.compile(r"\d+\.\d+")   # times print as Python floats; ids as ints


def numbers(text: str) -> set[float]:
    return {float(n) for n in NUMBER.findall(text)}


def test_the_oracle_never_states_a_clue_time_it_was_not_shown(episodes):
    for episode in episodes("oracle_truth"):
        clue_times = {float(t) for interval in episode.question.clue_intervals for t in interval}
        shown = numbers(episode.messages[0]["content"] + episode.messages[1]["content"])
        for turn in episode.turns:
            leaked = numbers(turn.action.think or "") & (clue_times - shown)
            assert not leaked, f"round {turn.round} states clue time(s) {leaked}: {turn.action.think}"
            shown |= numbers(turn.observation or "")


def test_every_time_the_oracle_cites_was_shown_to_it_before(episodes):
    for episode in episodes("oracle_truth"):
        shown = set(TIME.findall(episode.messages[1]["content"]))
        for turn in episode.turns:
            cited = set(TIME.findall(turn.action.think or ""))
            assert cited <= shown, f"round {turn.round} cites unseen times {cited - shown}: {turn.action.think}"
            shown |= set(TIME.findall(turn.observation or ""))



def test_the_oracle_answering_from_evidence_beats_or_ties_random(episodes):
    oracle, chance = accuracy(episodes("oracle_evidence", "all")), accuracy(episodes("random", "all"))
    assert oracle >= chance, (oracle, chance)


@pytest.mark.parametrize("policy", ["random", "oracle_evidence"])
def test_a_baseline_replays_identically(tools, questions, episodes, policy):
    again = [run_episode(POLICIES[policy](), q, tools) for q in questions["test"]]
    assert [(e.answer, e.visited, e.video_qa_segments) for e in again] == \
           [(e.answer, e.visited, e.video_qa_segments) for e in episodes(policy)]
