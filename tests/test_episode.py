"""The rules of a navigation episode, driven round by round against a real caption store."""

from __future__ import annotations

import json

import pytest

from longvideo_r1.agent import protocol
from longvideo_r1.agent.episode import Episode, EpisodeConfig, HighCaption, Question
from longvideo_r1.agent.tools import Tools
from longvideo_r1.corpus.store import CaptionStore
from tests.test_protocol import reference_low, reference_medium, reference_rl_user_turn
from tests.test_store import build, make_video

SMALL = ("vid_small", 2000, 2.0)      # 1000 s: width 4
LARGE = ("vid_large", 20000, 2.0)     # 10000 s: width 8
UNAVAILABLE = "<information>video_qa is not available in this run; use get_caption instead.</information>"


@pytest.fixture(scope="module")
def videos():
    return {video_id: make_video(video_id, frames, fps) for video_id, frames, fps in (SMALL, LARGE)}


@pytest.fixture(scope="module")
def tools(tmp_path_factory, videos) -> Tools:
    root = tmp_path_factory.mktemp("episode") / "store"
    build(root, list(videos.values()), shards=2)
    return Tools(CaptionStore(root), video_qa=None)


def question(video_id: str = "vid_small", answer: str | None = "B") -> Question:
    return Question(video_id, "What colour is the car that parks by the red door?",
                    ["red", "blue", "green", "black"], answer, [[100.0, 110.0]], qid="q1")


def start(tools: Tools, video_id: str = "vid_small", answer: str | None = "B", **config):
    return tools.start(question(video_id, answer), EpisodeConfig(**config))


def play(episode, tools: Tools, *texts: str):
    """Play one round per text the way a driver does: prompt, submit, run the tool, observe."""
    actions = []
    for text in texts:
        episode.prompt()
        action = episode.submit(text)
        if action.kind in ("get_caption", "video_qa"):
            episode.observe(*tools.run(episode.question.video_id, action))
        actions.append(action)
    return actions


def tool(call: str) -> str:
    return f"<think>Looking closer.</think><tool>{call}</tool>"


def answer(letter: str) -> str:
    return f"<think>I know it now.</think><answer>{letter}</answer>"


MALFORMED = "<think>I will look at the middle.</think> get_caption((2, 2))"


def record(videos, video_id: str, ids: tuple[int, ...]):
    return next(r for r in videos[video_id][1] if r.ids == ids)


# ---------------------------------------------------------------- what the model sees

def test_the_episode_opens_with_the_system_prompt_and_the_reference_first_turn(tools, videos):
    episode = start(tools)
    video, records = videos["vid_small"]
    high = [{"frame_time": list(r.frame_time), "caption": r.caption} for r in records if r.level == "high"]
    q = question()
    assert [m["role"] for m in episode.messages] == ["system", "user"]
    assert episode.messages[0]["content"] == protocol.system_prompt(video.width, 30)
    assert episode.messages[1]["content"] == reference_rl_user_turn(q.question, q.options, video.duration, high)


def test_a_caption_round_sends_back_the_reference_observation(tools, videos):
    episode = start(tools)
    play(episode, tools, tool("get_caption((1, 2))"), tool("get_caption((1, 2, 3))"))
    medium, low = record(videos, "vid_small", (1, 2)), record(videos, "vid_small", (1, 2, 3))
    assert episode.messages[-4:] == [
        {"role": "assistant", "content": tool("get_caption((1, 2))")},
        {"role": "user", "content": reference_medium(1, 2, list(medium.frame_time), medium.caption)},
        {"role": "assistant", "content": tool("get_caption((1, 2, 3))")},
        {"role": "user", "content": reference_low(1, 2, 3, list(low.frame_time), low.caption)},
    ]


def test_ids_are_bounded_by_the_width_of_each_video(tools):
    small, large = start(tools, "vid_small"), start(tools, "vid_large")
    assert (small.width, large.width) == (4, 8)
    assert play(small, tools, tool("get_caption((8, 8, 8))"))[0].kind == "invalid"
    assert play(large, tools, tool("get_caption((8, 8, 8))"))[0].kind == "get_caption"
    assert play(large, tools, tool("get_caption((9, 1))"))[0].kind == "invalid"


# ---------------------------------------------------------------- the rules

def test_one_tool_call_per_round(tools):
    episode = start(tools)
    [action] = play(episode, tools, tool("get_caption((1, 2))") + "<tool>get_caption((1, 3))</tool>")
    assert action.kind == "invalid" and "one action per round" in action.message
    assert episode.costs.get_caption_calls == 0 and episode.visited == []


def test_video_qa_before_its_low_caption_is_fetched_is_invalid_and_names_the_call_to_make(tools):
    episode = start(tools)
    # Neither the parent medium caption nor a sibling low caption unlocks clip (1, 2, 3).
    play(episode, tools, tool("get_caption((1, 2))"), tool("get_caption((1, 2, 4))"))
    [action] = play(episode, tools, tool('video_qa((1, 2, 3), "what colour is the car?")'))
    assert action.kind == "invalid"
    assert "get_caption((1,2,3))" in action.message
    assert action.message in episode.messages[-1]["content"]
    assert episode.costs.video_qa_calls == 0 and episode.video_qa_segments == []


def test_video_qa_after_its_low_caption_is_fetched_is_played(tools):
    episode = start(tools)
    actions = play(episode, tools, tool("get_caption((1, 2, 3))"),
                   tool('video_qa((1, 2, 3), "what colour is the car?")'))
    assert actions[1].kind == "video_qa" and actions[1].query == "what colour is the car?"
    assert episode.messages[-1] == {"role": "user", "content": UNAVAILABLE}
    assert episode.costs.video_qa_calls == 1 and episode.video_qa_segments == [(1, 2, 3)]


def test_a_malformed_round_is_dropped_from_messages_but_kept_in_turns(tools):
    episode = start(tools)
    play(episode, tools, tool("get_caption((1, 2))"), MALFORMED)
    assert all(m["content"] != MALFORMED for m in episode.messages)
    last = episode.turns[-1]
    assert (last.round, last.text, last.dropped, last.action.kind) == (2, MALFORMED, True, "invalid")
    assert not episode.turns[0].dropped


def test_a_malformed_round_counts_and_is_answered_with_a_corrective_note(tools):
    episode = start(tools)
    [action] = play(episode, tools, MALFORMED)
    note = f"Your last reply was not valid: {action.message}."
    assert "no action" in action.message
    assert episode.messages[-1] == {"role": "user", "content": note}
    assert episode.turns[-1].observation == note
    assert (episode.costs.rounds, episode.costs.invalid_rounds, episode.round) == (1, 1, 2)


def test_keep_malformed_keeps_the_malformed_text_in_messages(tools):
    episode = start(tools, keep_malformed=True)
    [action] = play(episode, tools, MALFORMED)
    assert episode.messages[-2:] == [
        {"role": "assistant", "content": MALFORMED},
        {"role": "user", "content": f"Your last reply was not valid: {action.message}."},
    ]
    assert episode.turns[-1].dropped is False and episode.costs.invalid_rounds == 1


def test_the_last_round_note_appears_once_right_before_the_last_round(tools):
    episode = start(tools, max_rounds=4)
    play(episode, tools, tool("get_caption((1, 1))"), MALFORMED)
    assert all(m["content"] != protocol.LAST_ROUND_NOTE for m in episode.messages)
    play(episode, tools, tool("get_caption((1, 1, 1))"))
    assert episode.round == 4 and episode.last_round
    assert episode.prompt()[-1] == {"role": "user", "content": protocol.LAST_ROUND_NOTE}
    episode.prompt()  # asking again does not add it twice
    play(episode, tools, tool("get_caption((1, 1, 2))"))
    contents = [m["content"] for m in episode.messages]
    assert contents.count(protocol.LAST_ROUND_NOTE) == 1
    note = contents.index(protocol.LAST_ROUND_NOTE)
    assert episode.messages[note + 1] == {"role": "assistant", "content": tool("get_caption((1, 1, 2))")}
    assert note + 3 == len(contents)  # note, the last round's text, its observation


def test_the_last_round_note_is_added_even_when_the_driver_skips_prompt(tools):
    episode = start(tools, max_rounds=2)
    episode.observe(*tools.run("vid_small", episode.submit(tool("get_caption((1, 1))"))))
    episode.submit(answer("B"))
    contents = [m["content"] for m in episode.messages]
    assert contents[-2:] == [protocol.LAST_ROUND_NOTE, answer("B")]


def test_the_episode_ends_after_max_rounds_without_an_answer(tools):
    episode = start(tools, max_rounds=3)
    play(episode, tools, tool("get_caption((1, 1))"), tool("get_caption((1, 2))"), tool("get_caption((1, 3))"))
    assert episode.done and episode.answer is None and episode.correct is False
    assert len(episode.turns) == 3


def test_malformed_rounds_count_towards_the_round_limit(tools):
    episode = start(tools, max_rounds=2)
    play(episode, tools, MALFORMED, MALFORMED)
    assert episode.done and episode.costs.invalid_rounds == 2 and episode.answer is None


def test_answering_ends_the_episode(tools):
    episode = start(tools)
    play(episode, tools, tool("get_caption((2, 1))"), answer("B"))
    assert episode.done and episode.answer == "B"
    assert episode.messages[-1] == {"role": "assistant", "content": answer("B")}
    assert episode.turns[-1].observation is None
    with pytest.raises(RuntimeError, match="over"):
        episode.prompt()


def test_submitting_after_the_end_raises(tools):
    episode = start(tools, max_rounds=1)
    play(episode, tools, MALFORMED)
    with pytest.raises(RuntimeError, match="over"):
        episode.submit(answer("B"))


@pytest.mark.parametrize("letter, truth, correct", [
    ("B", "B", True),
    (" B ", "B", True),
    ("C", "B", False),
    ("b", "B", False),
    ("B", None, None),
])
def test_correct_compares_the_answer_with_the_ground_truth(tools, letter, truth, correct):
    episode = start(tools, answer=truth)
    play(episode, tools, answer(letter))
    assert episode.correct is correct


def test_costs_count_rounds_and_calls_per_tool(tools):
    episode = start(tools)
    play(episode, tools, tool("get_caption((3, 2))"), tool("get_caption((3, 2, 1))"),
         tool('video_qa((3, 2, 1), "what colour?")'), MALFORMED, tool("get_caption((3, 2, 1))"), answer("A"))
    c = episode.costs
    assert (c.rounds, c.get_caption_calls, c.video_qa_calls, c.invalid_rounds) == (6, 3, 1, 1)
    assert episode.visited == [(3, 2), (3, 2, 1), (3, 2, 1)]
    assert episode.video_qa_segments == [(3, 2, 1)]


def test_seconds_are_summed_per_model(tools):
    episode = start(tools)
    action = episode.submit(tool("get_caption((1, 1, 1))"), policy_seconds=1.5)
    episode.observe(tools.run("vid_small", action)[0], tool_seconds=0.25)
    action = episode.submit(tool('video_qa((1, 1, 1), "what?")'), policy_seconds=2.0)
    episode.observe(tools.run("vid_small", action)[0], tool_seconds=4.0)
    c = episode.costs
    assert (c.policy_seconds, c.get_caption_seconds, c.video_qa_seconds) == (3.5, 0.25, 4.0)
    assert c.model_seconds == 7.5  # policy and video QA compute; caption lookups are not model time


def test_submitting_twice_without_observing_raises(tools):
    episode = start(tools)
    episode.submit(tool("get_caption((1, 1))"))
    with pytest.raises(RuntimeError, match="observe"):
        episode.submit(tool("get_caption((1, 2))"))


def test_observing_without_a_pending_call_raises(tools):
    episode = start(tools)
    with pytest.raises(RuntimeError, match="no tool call is pending"):
        episode.observe("Medium-level Caption from tool get_caption((1,1)). From 0.0 to 1.0:x")


def test_to_json_is_json_serialisable(tools):
    episode = start(tools)
    play(episode, tools, tool("get_caption((1, 2, 3))"), tool('video_qa((1, 2, 3), "what?")'), MALFORMED,
         answer("B"))
    data = json.loads(json.dumps(episode.to_json()))
    assert (data["answer"], data["correct"], data["rounds"]) == ("B", True, 4)
    assert data["visited"] == [[1, 2, 3]] and data["video_qa_segments"] == [[1, 2, 3]]
    assert data["costs"]["invalid_rounds"] == 1
    assert [t["dropped"] for t in data["turns"]] == [False, False, True, False]
    assert data["turns"][2]["action"]["kind"] == "invalid" and data["turns"][2]["action"]["message"]
    assert data["messages"] == episode.messages
    assert data["question"]["qid"] == "q1"


def test_high_captions_must_match_the_width():
    with pytest.raises(ValueError, match="3 high-level captions for a tree of width 4"):
        Episode(question(), 4, 100.0, [HighCaption(0.0, 1.0, "x")] * 3)
