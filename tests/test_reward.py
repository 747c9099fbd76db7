"""The reward (PROTOCOL §3): hand-computed cases, properties, and the reference's numbers reproduced.

Geometry used by the hand cases: width 4, duration 256 s, so a high segment lasts 256/4 = 64 s,
a medium one 256/16 = 16 s and a low one 256/64 = 4 s. Segment (h, m, l) starts at
(h-1)·64 + (m-1)·16 + (l-1)·4 seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from longvideo_r1.errors import InputError
from longvideo_r1.reward.score import (RewardConfig, compute_score, get_caption_calls, last_answer,
                                       localisation_f1, merge_clues, overlap_length, reference_score, score_calls,
                                       union_intervals)

W, D = 4, 256.0
CG = "videocaption_cgbench"


def info(clues, width=W, duration=D):
    return {"width": width, "duration": duration, "clue_intervals": clues}


def episode(*calls: str, answer: str | None = "A") -> str:
    """An episode's response text: one <think>+<tool> round per call, then the answer."""
    rounds = [f"<think>look at {c}</think>\n<tool>{c}</tool>\nMedium-level Caption from tool {c}. From 0 to 1:x\n"
              for c in calls]
    return "".join(rounds) + (f"<think>done</think>\n<answer>{answer}</answer>" if answer is not None else "")


def gc(*ids: int) -> str:
    return f"get_caption(({', '.join(map(str, ids))}))"


def fixed(text, clues, ground_truth="A", **kwargs):
    return compute_score(CG, text, ground_truth, info(clues), **kwargs)


def ref(text, clues, ground_truth="A", **kwargs):
    return compute_score(CG, text, ground_truth, info(clues), reference_compat=True, **kwargs)


# ---------------------------------------------------------------- hand-computed, fixed formula

def test_medium_and_nested_low_visit_over_a_clue():
    # clue [10, 14], 4 s long. (1,1) = [0, 16]; (1,1,3) starts at 2·4 = 8 -> [8, 12], inside (1,1).
    # union of visits = [0, 16], 16 s; overlap with the clue = 4 s.
    # coverage = 4/4 = 1, precision = 4/16 = 0.25, F1 = 2·1·0.25 / 1.25 = 0.4; no repeats.
    r = fixed(episode(gc(1, 1), gc(1, 1, 3)), [[10, 14]])
    assert r == {"score": pytest.approx(1.4), "answer_reward": 1.0, "f1_reward": pytest.approx(0.4),
                 "repeat_reward": 0.0}
    assert score_calls("A", "A", [(1, 1), (1, 1, 3)], W, D, [[10, 14]]) == r


def test_low_visit_half_on_the_clue():
    # (1,1,3) = [8, 12] against [10, 14]: overlap 2 -> coverage 2/4 = 0.5, precision 2/4 = 0.5, F1 0.5.
    r = fixed(episode(gc(1, 1, 3), answer="B"), [[10, 14]])
    assert (r["answer_reward"], r["f1_reward"], r["score"]) == (0.0, pytest.approx(0.5), pytest.approx(0.5))


def test_repeats_cost_without_changing_f1():
    # (1,1,3) twice, (2,1) once: 3 calls, 2 distinct -> repeat = (3 - 2)/2 = 0.5.
    # (2,1) = [64, 80] misses the clue: union = 4 + 16 = 20 s, overlap 2 -> cov 0.5, prec 0.1,
    # F1 = 2·0.05/0.6 = 1/6. score = 1 + 1/6 - 0.2·0.5.
    r = fixed(episode(gc(1, 1, 3), gc(2, 1), gc(1, 1, 3)), [[10, 14]])
    assert r["repeat_reward"] == 0.5
    assert r["f1_reward"] == pytest.approx(1 / 6)
    assert r["score"] == pytest.approx(1 + 1 / 6 - 0.1)


def test_last_answer_counts_stripped_and_case_sensitive():
    assert fixed("<answer>B</answer> then <answer> A \n</answer>", [[10, 14]])["answer_reward"] == 1.0
    assert fixed("<answer>a</answer>", [[10, 14]])["answer_reward"] == 0.0
    assert fixed("<answer>A", [[10, 14]])["answer_reward"] == 0.0          # never closed
    assert last_answer("<answer>A<answer>B</answer>") == "A<answer>B"     # first opening to first closing


def test_only_calls_the_episode_accepts_count():
    # Out of range (0 and 5 for width 4), high level (1,), four ids, video_qa, trailing text: none count.
    text = episode(gc(0, 1), gc(1, 5), "get_caption((1,))", gc(1, 1, 1, 1), 'video_qa((1, 1, 3), "colour?")',
                   "get_caption((1, 1, 3)) please", gc(1, 1, 3), "get_caption(1, 1, 3)",
                   "get_caption ( (1,1,3) )")
    assert get_caption_calls(text, W) == [(1, 1, 3)] * 3
    r = fixed(text, [[10, 14]])
    assert r["f1_reward"] == pytest.approx(0.5) and r["repeat_reward"] == 2.0   # (3 - 1)/1


def test_clues_merge_across_small_gaps_against_the_running_end():
    assert merge_clues([(14, 20), (0, 10)]) == [(0, 20)]                # gap 4 <= 5
    assert merge_clues([(0, 10), (16, 20)]) == [(0, 10), (16, 20)]      # gap 6 > 5
    assert merge_clues([(0, 100), (10, 20), (30, 40)]) == [(0, 100)]    # 30 is inside the running group
    assert merge_clues([(0, 10), (12, 20)], gap=1.0) == [(0, 10), (12, 20)]
    # merged clue [0, 20] (gap included) vs (1,1) = [0, 16]: cov 16/20, prec 1, F1 = 1.6/1.8.
    assert fixed(episode(gc(1, 1)), [[0, 10], [14, 20]])["f1_reward"] == pytest.approx(1.6 / 1.8)


def test_interval_helpers():
    assert union_intervals([(5, 8), (0, 2), (2, 3), (7, 9)]) == [(0, 3), (5, 9)]
    assert overlap_length([(0, 10), (5, 12)], [(8, 20)]) == 4.0      # union [0, 12] ∩ [8, 20]
    assert overlap_length([(0, 1)], [(1, 2)]) == 0.0
    assert localisation_f1([(0, 16), (8, 12)], [(10, 14)]) == (1.0, 0.25, pytest.approx(0.4))


def test_questions_without_clues_are_scored_on_the_answer_alone():
    text = episode(gc(1, 1), gc(1, 1))
    for clues in (None, []):
        assert fixed(text, clues) == {"score": 1.0, "answer_reward": 1.0, "f1_reward": 0.0, "repeat_reward": 0.0}
    # The reference still charges the repeat: 2 calls, 1 distinct -> 1 - 0.2·1.
    assert ref(text, None)["score"] == pytest.approx(0.8)


def test_answer_only_source_needs_no_extra_info():
    text = episode(gc(1, 1), gc(1, 1), answer=" C ")
    assert compute_score("videocaption_videomme", text, "C") == {
        "score": 1.0, "answer_reward": 1.0, "f1_reward": 0.0, "repeat_reward": 0.0}
    assert compute_score("videocaption_videomme", text, "D", w_answer=2.0)["score"] == 0.0
    assert compute_score("videocaption_videomme", text, "C", reference_compat=True)["score"] == 1.0


def test_demo_source_gets_the_full_reward_and_weights_apply():
    text = episode(gc(1, 1, 3))
    r = compute_score("lvr1_demo", text, "A", info([[10, 14]]), w_answer=0.5, w_f1=2.0)
    assert r["score"] == pytest.approx(0.5 + 2 * 0.5)
    r2 = compute_score("lvr1_demo", text, "A", info([[10, 14]]), config=RewardConfig(w_f1=0.0))
    assert r2["score"] == 1.0


def test_width_and_duration_may_come_as_numpy_scalars_and_clues_as_arrays():
    import numpy as np
    r = compute_score(CG, episode(gc(1, 1, 3)), "A", {"width": np.int64(4), "duration": np.float64(256),
                                                      "clue_intervals": np.array([[10.0, 14.0]])})
    assert r["f1_reward"] == pytest.approx(0.5)


# ---------------------------------------------------------------- the reference's defects, by hand

def test_reference_double_counts_nested_visits():
    # Same episode as the first test. Reference overlap = (1,1)∩clue + (1,1,3)∩clue = 4 + 2 = 6:
    # coverage 6/4 = 1.5, precision 6/16 = 0.375, F1 = 2·1.5·0.375 / 1.875 = 0.6 (fixed: 0.4).
    assert ref(episode(gc(1, 1), gc(1, 1, 3)), [[10, 14]])["f1_reward"] == pytest.approx(0.6)
    # (1,1) = [0,16] and (1,1,1) = [0,4] over clue [0,4]: overlap 4 + 4 = 8, coverage 8/4 = 2 > 1,
    # precision 8/16 = 0.5, F1 = 2·2·0.5/2.5 = 0.8 (fixed: cov 1, prec 0.25, F1 0.4).
    assert ref(episode(gc(1, 1), gc(1, 1, 1)), [[0, 4]])["f1_reward"] == pytest.approx(0.8)
    assert fixed(episode(gc(1, 1), gc(1, 1, 1)), [[0, 4]])["f1_reward"] == pytest.approx(0.4)
    # reference_score is the function behind the switch; its config supplies weights and gap.
    text = episode(gc(1, 1), gc(1, 1, 1))
    assert reference_score(text, "A", info([[0, 4]])) == ref(text, [[0, 4]])
    assert reference_score(text, "A", info([[0, 4]]), RewardConfig(w_f1=0.5))["score"] == pytest.approx(1.4)


def test_reference_rewards_repeating_a_call():
    # (1,1,3) twice over [10, 14]: overlap 2 + 2 = 4 -> cov 1, prec 4/4 = 1, F1 1; repeat 1.
    # Reference score 1 - 0.2 = 0.8, higher than the 0.5 of calling it once; fixed: 0.5 - 0.2 = 0.3.
    once, twice = episode(gc(1, 1, 3), answer="B"), episode(gc(1, 1, 3), gc(1, 1, 3), answer="B")
    assert ref(once, [[10, 14]])["score"] == pytest.approx(0.5)
    assert ref(twice, [[10, 14]])["score"] == pytest.approx(0.8)
    assert fixed(twice, [[10, 14]])["score"] == pytest.approx(0.3)


def test_reference_clue_merge_leaves_overlapping_clues():
    # Clues [0,100], [10,20], [30,40]: the reference compares 30 with 20 (the previous clue's end),
    # not with 100, and keeps [0,100] and [30,40]: total 110 s. Visit (1,3) = [32, 48]:
    # reference overlap = 16 + 8 = 24, cov 24/110, prec 24/16 = 1.5; fixed: overlap 16 with [0,100],
    # cov 0.16, prec 1, F1 = 0.32/1.16.
    clues = [[0, 100], [10, 20], [30, 40]]
    cov, prec = 24 / 110, 1.5
    assert ref(episode(gc(1, 3)), clues)["f1_reward"] == pytest.approx(2 * cov * prec / (cov + prec))
    assert fixed(episode(gc(1, 3)), clues)["f1_reward"] == pytest.approx(0.32 / 1.16)


def test_reference_counts_calls_the_episode_rejects():
    # (0,1) starts at -64: [-64, -48], 16 s added to the visited union -> precision 2/20 = 0.1,
    # coverage 0.5, F1 = 0.1/0.6. Fixed mode ignores the out-of-range call: F1 0.5.
    text = episode(gc(0, 1), gc(1, 1, 3))
    assert ref(text, [[10, 14]])["f1_reward"] == pytest.approx(1 / 6)
    assert fixed(text, [[10, 14]])["f1_reward"] == pytest.approx(0.5)
    # get_caption() -> () -> [0, 0]: no time, but one more distinct call. (1,1,3) twice + () ->
    # 3 calls, 2 distinct: repeat 0.5 (fixed: 1.0, since () is not a call).
    text = episode(gc(1, 1, 3), gc(1, 1, 3), "get_caption()")
    assert ref(text, [[10, 14]])["repeat_reward"] == 0.5
    assert fixed(text, [[10, 14]])["repeat_reward"] == 1.0
    # (True, 1, 3) equals (1, 1, 3) in a Python set: a repeat for the reference, invalid for us.
    assert ref(episode(gc(1, 1, 3), "get_caption((True, 1, 3))"), [[10, 14]])["repeat_reward"] == 1.0
    # Trailing text after the call still parses for the reference; a space before '(' does not.
    assert ref(episode("get_caption((1, 1, 3)) now"), [[10, 14]])["f1_reward"] == pytest.approx(0.5)
    assert ref(episode("get_caption ((1, 1, 3))"), [[10, 14]])["f1_reward"] == 0.0
    assert fixed(episode("get_caption ((1, 1, 3))"), [[10, 14]])["f1_reward"] == pytest.approx(0.5)


def test_reference_gives_up_part_way_on_odd_arguments():
    good = [gc(1, 1, 3), gc(1, 1, 3)]
    # An argument without a length stops the reference while it collects calls: answer only.
    assert ref(episode("get_caption(5)", *good), [[10, 14]]) == {
        "score": 1.0, "answer_reward": 1.0, "f1_reward": 0.0, "repeat_reward": 0.0}
    # An unhashable argument stops it while de-duplicating: answer only again.
    assert ref(episode(*good, "get_caption([1, 1])"), [[10, 14]])["repeat_reward"] == 0.0
    # A string argument fails only when mapped to time: the repeat is kept, F1 is lost.
    r = ref(episode(*good, "get_caption('ab')"), [[10, 14]])
    assert (r["f1_reward"], r["repeat_reward"]) == (0.0, 0.5)
    # Fixed mode ignores all three and scores the two good calls: F1 0.5, repeat 1.
    for bad in ("get_caption(5)", "get_caption([1, 1])", "get_caption('ab')"):
        r = fixed(episode(bad, *good), [[10, 14]])
        assert (r["f1_reward"], r["repeat_reward"]) == (pytest.approx(0.5), 1.0)


# ---------------------------------------------------------------- errors and hostile input

def test_unknown_data_source_is_an_input_error_listing_the_known_ones():
    with pytest.raises(InputError, match="'mmlu'.*videocaption_cgbench, lvr1_demo, videocaption_videomme"):
        compute_score("mmlu", "<answer>A</answer>", "A", info([[0, 1]]))


def test_missing_extra_info_is_an_input_error_naming_the_keys():
    with pytest.raises(InputError, match="lacks width, clue_intervals"):
        compute_score(CG, "<answer>A</answer>", "A", {"duration": 10.0})
    with pytest.raises(InputError, match="extra_info.*NoneType"):
        compute_score("lvr1_demo", "<answer>A</answer>", "A", None)
    with pytest.raises(InputError, match="lacks duration"):
        compute_score(CG, "<answer>A</answer>", "A", {"width": 4, "clue_intervals": []}, reference_compat=True)


@pytest.mark.parametrize("extra, match", [
    ({"width": 0}, "width=0"), ({"width": 4.5}, "width=4.5"), ({"duration": -1}, "duration=-1"),
    ({"clue_intervals": [[5, 1]]}, r"clue_intervals\[0\]"), ({"clue_intervals": [[1, 2, 3]]}, r"clue_intervals\[0\]"),
    ({"clue_intervals": "0-4"}, "clue_intervals='0-4'"), ({"clue_intervals": [["a", "b"]]}, r"clue_intervals\[0\]"),
])
def test_bad_extra_info_values_are_input_errors(extra, match):
    with pytest.raises(InputError, match=match):
        compute_score(CG, episode(gc(1, 1)), "A", {**info([[0, 4]]), **extra})


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="unknown reward setting.*w_anser"):
        compute_score(CG, "", "A", info([]), w_anser=1.0)
    with pytest.raises(InputError, match="clue_merge_gap"):
        RewardConfig(clue_merge_gap=-1)
    with pytest.raises(InputError, match="w_f1"):
        RewardConfig(w_f1="1")
    with pytest.raises(InputError, match="ground_truth"):
        compute_score(CG, "<answer>1</answer>", 1, info([]))
    # verl's own keyword arguments are accepted and ignored.
    assert compute_score(CG, "<answer>A</answer>", "A", info([]), sandbox_fusion_url=None)["score"] == 1.0


@pytest.mark.timeout(20)   # sized so that a quadratic scan would take minutes, not seconds
def test_huge_and_binary_solutions_stay_cheap():
    blob = os.urandom(4_000_000)
    hostile = [
        blob,                                                         # bytes
        blob.decode("latin-1"),                                       # every code point 0..255
        "<tool>" * 300_000 + "<answer>" * 300_000 + "</tool",          # many unclosed openings
        ("<tool>" + gc(1, 1, 3) + "</tool>") * 100_000 + "<answer>A</answer>",  # many repeated calls
        "<tool>get_caption(" + "(" * 100_000 + "</tool>" + "<tool>get_caption(" + "-" * 100_000 + "1)</tool>",
        "<answer>" + "x" * 3_000_000 + "</answer>",
    ]
    for text in hostile:
        for compat in (False, True):
            with contextlib.redirect_stdout(io.StringIO()):
                r = compute_score(CG, text, "A", info([[10, 14]]), reference_compat=compat)
            assert set(r) == {"score", "answer_reward", "f1_reward", "repeat_reward"}
    r = compute_score(CG, hostile[3], "A", info([[10, 14]]))
    assert r["repeat_reward"] == 99_999.0 and r["f1_reward"] == pytest.approx(0.5)


# ---------------------------------------------------------------- properties of the fixed formula

@st.composite
def scenarios(draw):
    width = draw(st.integers(3, 8))
    duration = draw(st.floats(20.0, 10_000.0))
    ids = st.lists(st.integers(1, width), min_size=2, max_size=3).map(tuple)
    calls = draw(st.lists(ids, max_size=12))
    point = st.floats(-10.0, duration + 10.0)
    clues = draw(st.lists(st.tuples(point, point).map(sorted), min_size=1, max_size=5))
    return width, duration, calls, clues


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_f1_and_its_parts_stay_in_the_unit_interval(s):
    width, duration, calls, clues = s
    r = score_calls("A", "A", calls, width, duration, clues)
    assert 0.0 <= r["f1_reward"] <= 1.0 and r["repeat_reward"] >= 0.0
    assert r["score"] == pytest.approx(1.0 + r["f1_reward"] - 0.2 * r["repeat_reward"])


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.data())
def test_adding_a_repeated_call_never_raises_the_score(s, data):
    width, duration, calls, clues = s
    assume(calls)
    repeated = data.draw(st.sampled_from(calls))
    more = list(calls)
    more.insert(data.draw(st.integers(0, len(calls))), repeated)
    before, after = (score_calls("B", "A", c, width, duration, clues) for c in (calls, more))
    assert after["f1_reward"] == before["f1_reward"]
    assert after["score"] <= before["score"]


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.floats(-3, 3), st.floats(-3, 3), st.floats(-1, 0))
def test_a_correct_answer_adds_exactly_w_answer(s, w_answer, w_f1, w_repeat):
    width, duration, calls, clues = s
    config = RewardConfig(w_answer=w_answer, w_f1=w_f1, w_repeat=w_repeat)
    right, wrong = (score_calls(a, "A", calls, width, duration, clues, config) for a in ("A", "B"))
    assert right["score"] - wrong["score"] == pytest.approx(w_answer, abs=1e-9)


# ---------------------------------------------------------------- differential test against the reference file

MIRROR = "/work/.mirror/qiujihao19+LongVideo-R1/repo"
REFERENCE_PATH = "verl-tool/verl/verl/utils/reward_score/longvideor1_score.py"


@pytest.fixture(scope="module")
def reference_module(tmp_path_factory):
    """The reference scoring file, extracted from the mirror and imported as it is."""
    if not os.path.isdir(MIRROR):
        pytest.skip("the reference mirror is not on this machine")
    shown = subprocess.run(["git", "-C", MIRROR, "show", f"HEAD:{REFERENCE_PATH}"], capture_output=True, text=True)
    if shown.returncode != 0:
        pytest.skip(f"the reference scoring file is not in the mirror: {shown.stderr.strip()}")
    path = tmp_path_factory.mktemp("reference") / "longvideor1_score.py"
    path.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location("reference_longvideor1_score", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tuple_text(ids) -> str:
    return f"({', '.join(map(str, ids))}{',' if len(ids) == 1 else ''})"


_VALID_IDS = st.lists(st.integers(1, 3), min_size=2, max_size=3).map(lambda ids: f"({', '.join(map(str, ids))})")
_ARGS = st.one_of(
    _VALID_IDS, _VALID_IDS, _VALID_IDS,
    st.lists(st.integers(-1, 9), max_size=4).map(_tuple_text),
    st.lists(st.integers(0, 9), min_size=1, max_size=4).map(lambda ids: ", ".join(map(str, ids))),
    st.sampled_from(["", "()", "5", "None", "(1.5, 2)", "(True, 1, 3)", "(1, 1, 3,)", "'ab'", "b'ab'", "[1, 2]",
                     "{1, 2}", "{1: 2}", "set()", "((1, 2),)", "(1+2j, 1)", "(1, 2", "x y", "(1,\n2)",
                     "(1, 2)) and (3", "(1e308, 1)", "(-1e308, 2, 2)", "(None, 1)", "('a', 'b', 'c')"]),
)
_CALL = st.builds(lambda name, pad, args, tail: f"{pad}{name}({args}){tail}",
                  st.sampled_from(["get_caption"] * 6 + ["video_qa", "xget_caption",
                                   "get_caption ", "Get_caption"]),
                  st.sampled_from(["", " ", "\n"]), _ARGS, st.sampled_from(["", "", " now", ")", "\nmore"]))
_FRAGMENT = st.one_of(
    _CALL.map(lambda c: f"<tool>{c}</tool>"),
    _CALL.map(lambda c: f"<tool>{c}</tool>"),
    _CALL.map(lambda c: f"<tool>{c}</tool>"),
    _CALL.map(lambda c: f"<think>{c}</think><tool>{c}</tool>"),
    st.sampled_from(["A", "B", " A ", "a", "", "A</tool>"]).map(lambda a: f"<answer>{a}</answer>"),
    st.sampled_from(["<tool>", "</tool>", "<answer>", "</answer>", "<think>", "\n", "<tool><tool>x</tool>"]),
    st.text(max_size=12),
)
_NUMBER = st.one_of(st.integers(-20, 400), st.floats(-20, 400, allow_nan=False))
_CLUES = st.one_of(st.none(), st.just([]),
                   st.lists(st.lists(_NUMBER, min_size=2, max_size=2), min_size=1, max_size=5),
                   st.lists(st.tuples(_NUMBER, _NUMBER), min_size=1, max_size=3))


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FRAGMENT, max_size=10).map("".join), st.sampled_from(["A", "B"]),
       st.integers(2, 8), st.one_of(st.floats(1.0, 600.0), st.integers(1, 600)), _CLUES)
def test_reference_compat_matches_the_reference_file(reference_module, text, truth, width, duration, clues):
    extra = {"width": width, "duration": duration, "clue_intervals": clues}
    with contextlib.redirect_stdout(io.StringIO()):    # the reference prints every unreadable call
        expected = reference_module.compute_score(CG, text, truth, extra)
        only_answer = reference_module.compute_score("videocaption_videomme", text, truth, extra)
    got = compute_score(CG, text, truth, extra, reference_compat=True)
    assert set(got) == set(expected)
    for key in expected:
        assert _same(float(expected[key]), got[key]), (key, expected, got)
    assert compute_score("videocaption_videomme", text, truth, reference_compat=True)["score"] == only_answer
    # Answers are extracted the same way in both modes.
    assert compute_score("videocaption_videomme", text, truth)["score"] == only_answer


@settings(max_examples=200, deadline=None)
@given(st.integers(3, 8), st.floats(100.0, 5000.0), st.data())
def test_both_modes_agree_when_no_defect_is_triggered(width, duration, data):
    # Distinct low segments (disjoint ranges) and clues far apart: nothing is nested, repeated or
    # merged, so the pairwise sum equals the overlap of the unions.
    lows = data.draw(st.lists(st.tuples(*[st.integers(1, width)] * 3), unique=True, max_size=6))
    starts = sorted(data.draw(st.lists(st.floats(0, duration), min_size=1, max_size=3, unique=True)))
    clues = [[a, min(b, a + 1.0)] for a, b in zip(starts, starts[1:] + [duration + 10])]
    assume(all(b[0] - a[1] > 5.0 for a, b in zip(clues, clues[1:])))
    text = episode(*(gc(*ids) for ids in lows))
    extra = info(clues, width, duration)
    ours, theirs = compute_score(CG, text, "A", extra), compute_score(CG, text, "A", extra, reference_compat=True)
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12)


_ID_TUPLE = st.lists(st.integers(-1, 9), max_size=3).map(_tuple_text)
_SIMPLE_CALLS = st.lists(_ID_TUPLE.map(lambda a: f"<tool>get_caption({a})</tool>"), min_size=1, max_size=8).map("".join)
_SOME_CLUES = st.lists(st.lists(st.floats(-5, 300, allow_nan=False), min_size=2, max_size=2), min_size=1, max_size=5)


@settings(max_examples=400, deadline=None)
@given(_SIMPLE_CALLS, st.integers(2, 6), st.floats(20.0, 300.0), _SOME_CLUES)
def test_reference_compat_matches_the_reference_file_on_plain_calls(reference_module, calls, width, duration, clues):
    # Calls with 0 to 3 ids in -1..9 and clues always present: the numeric path (nested and repeated
    # visits, out-of-range ids, overlapping and inverted clues) rather than the exception paths.
    extra = {"width": width, "duration": duration, "clue_intervals": clues}
    text = calls + "<answer>A</answer>"
    with contextlib.redirect_stdout(io.StringIO()):
        expected = reference_module.compute_score(CG, text, "A", extra)
    got = compute_score(CG, text, "A", extra, reference_compat=True)
    for key in expected:
        assert _same(float(expected[key]), got[key]), (key, expected, got)
