"""The navigation protocol: the text the model sees is the reference's, and the action grammar is strict,
never raises and never executes anything it reads."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from longvideo_r1.agent import protocol
from longvideo_r1.agent.protocol import Action, parse_action
from longvideo_r1.errors import InputError

WIDTH = 4
KINDS = {"get_caption", "video_qa", "answer", "invalid"}


# ---------------------------------------------------------------- the reference's strings, transcribed
# Written out independently from the reference's f-strings (verl-tool longvideor1_cgbenchdata.py,
# caption_videoqa.py, eval/evaluation.py), so a change on our side shows up as a byte difference.

def reference_rl_user_turn(question: str, choices: list[str] | None, duration, high: list[dict]) -> str:
    if choices is None:  # LVBench/MLVU: the options are already part of the question text
        user_content = f"{question}\n"
    else:
        option = "\n".join(f"{chr(65 + i)}. {opt}" for i, opt in enumerate(choices))
        user_content = f"{question}\n{option}\n"
    lines = [f"High-level Caption {idx + 1} from {d['frame_time'][0]} to {d['frame_time'][-1]}:{d['caption']}"
             for idx, d in enumerate(high)]
    time_prompt = f"The total duration of the video is {duration} seconds."
    return f"{user_content}\n\n" + f"{time_prompt}\n\n" + "\n".join(lines) + "\n\n"


def reference_medium(h: int, m: int, frame_time: list[float], caption: str) -> str:
    return f"Medium-level Caption from tool get_caption(({h},{m})). From {frame_time[0]} to {frame_time[-1]}:{caption}"


def reference_low(h: int, m: int, l: int, frame_time: list[float], caption: str) -> str:
    return (f"Low-level Caption from tool get_caption(({h},{m},{l})). "
            f"From {frame_time[0]} to {frame_time[-1]}:{caption}")


HIGH = [
    {"frame_time": [0.0, 3.5, 7.0, 112.4], "caption": "A man walks into a red room."},
    {"frame_time": [113.0, 200.1, 225.8], "caption": "<caption>Wrapped text stays as it is.</caption>"},
    {"frame_time": [226.5, 338.9], "caption": "Unicode — “quotes”, émigré, 日本語; braces {width} {0}."},
    {"frame_time": [339.4, 451.0], "caption": "Two lines:\nthe second line."},
]


def high_tuples(high):
    return [(d["frame_time"][0], d["frame_time"][-1], d["caption"]) for d in high]


@pytest.mark.parametrize("duration", [451.5, 3600.0, 139.0, 1234.25])
def test_first_user_turn_is_the_reference_rl_prompt_byte_for_byte(duration):
    question = "What does the sign say right after the dog barks?"
    choices = ["MAPLE", "COMET", "ORBIT", "RIVER"]
    got = protocol.first_user_turn(question, choices, duration, high_tuples(HIGH))
    assert got == reference_rl_user_turn(question, choices, duration, HIGH)


def test_first_user_turn_without_options_keeps_the_question_as_written():
    question = "Which colour comes first?\n(A) red\n(B) blue"
    got = protocol.first_user_turn(question, None, 451.5, high_tuples(HIGH))
    assert got == reference_rl_user_turn(question, None, 451.5, HIGH)


def test_options_that_are_already_lettered_are_not_lettered_twice():
    question = "What colour is the car?"
    lettered = ["A. red", "B. blue", "C. green", "D. black"]
    got = protocol.first_user_turn(question, lettered, 451.5, high_tuples(HIGH))
    assert got == reference_rl_user_turn(question, ["red", "blue", "green", "black"], 451.5, HIGH)


@pytest.mark.parametrize("ids, frame_time, caption", [
    ((1, 2), [12.5, 13.0, 20.5], "People sit at a table."),
    ((8, 8), [0.0, 1.0], "Text with <caption>tags</caption> and {braces}."),
])
def test_medium_caption_observation_is_the_reference_string(ids, frame_time, caption):
    got = protocol.caption_observation(ids, frame_time[0], frame_time[-1], caption)
    assert got == reference_medium(*ids, frame_time, caption)


@pytest.mark.parametrize("ids, frame_time, caption", [
    ((1, 2, 3), [12.5, 13.0, 14.9], "A sign reads 'OPEN'."),
    ((4, 4, 4), [3599.1, 3600.0], "Multi\nline\ncaption — ünïcode."),
])
def test_low_caption_observation_is_the_reference_string(ids, frame_time, caption):
    got = protocol.caption_observation(ids, frame_time[0], frame_time[-1], caption)
    assert got == reference_low(*ids, frame_time, caption)


@pytest.mark.parametrize("answer", ["The sign says MAPLE.", "", "Line one\nline two <b>{x}</b>"])
def test_video_qa_observation_is_the_reference_string(answer):
    assert protocol.video_qa_observation(answer) == f"<information>{answer}</information>"


# ---------------------------------------------------------------- the system prompt

def test_system_prompt_states_the_width_the_tools_and_the_output_format():
    prompt = protocol.system_prompt(6, max_rounds=30)
    assert "1 to 6" in prompt and "6 consecutive segments" in prompt
    assert "{width}" not in prompt and "{max_rounds}" not in prompt
    for text in ("get_caption((h, m))", "get_caption((h, m, l))", 'video_qa((h, m, l), "',
                 "<think></think>", "<tool>", "</tool>", "<answer>", "</answer>", "30 rounds"):
        assert text in prompt, text


def test_a_user_template_file_with_width_is_used(tmp_path):
    path = tmp_path / "system.txt"
    path.write_text("Navigate a tree of width {width} within {max_rounds} rounds.", encoding="utf-8")
    template = protocol.load_system_template(path)
    assert protocol.system_prompt(5, 15, template) == "Navigate a tree of width 5 within 15 rounds."


def test_a_user_template_without_width_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "system.txt"
    path.write_text("A tree of some width.", encoding="utf-8")
    with pytest.raises(InputError, match=r"system\.txt.*\{width\}"):
        protocol.load_system_template(path)


def test_a_missing_template_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot be read"):
        protocol.load_system_template(tmp_path / "absent.txt")


def test_other_braces_in_a_user_template_survive(tmp_path):
    path = tmp_path / "system.txt"
    path.write_text('Width {width}. Reply like {"tool": "get_caption"} or {0} or {unknown} or {{x}}.',
                    encoding="utf-8")
    prompt = protocol.system_prompt(7, 30, protocol.load_system_template(path))
    assert prompt == 'Width 7. Reply like {"tool": "get_caption"} or {0} or {unknown} or {{x}}.'


def test_no_template_means_our_default_prompt():
    assert protocol.load_system_template(None) == protocol.DEFAULT_SYSTEM_PROMPT


# ---------------------------------------------------------------- parse_action: valid forms

def turn(action: str, think: str = "I should look closer.") -> str:
    return f"<think>{think}</think>{action}"


@pytest.mark.parametrize("call, ids", [
    ("get_caption((1, 2))", (1, 2)),
    ("get_caption((1,2))", (1, 2)),
    ("get_caption(1, 2)", (1, 2)),
    ("get_caption((4, 4, 4))", (4, 4, 4)),
    ("get_caption((1,2,3))", (1, 2, 3)),
    ("get_caption(1, 2, 3)", (1, 2, 3)),
    ("  get_caption(( 3 , 1 ))  ", (3, 1)),
])
def test_get_caption_with_two_or_three_ids_is_a_get_caption_action(call, ids):
    action = parse_action(turn(f"<tool>{call}</tool>"), WIDTH)
    assert (action.kind, action.ids, action.message) == ("get_caption", ids, None)
    assert action.call == f"get_caption(({','.join(map(str, ids))}))"


@pytest.mark.parametrize("call, query", [
    ('video_qa((1, 2, 3), "what colour is the car?")', "what colour is the car?"),
    ("video_qa((1, 2, 3), 'what colour is the car?')", "what colour is the car?"),
    ("video_qa((1,2,3), \"the sign's text\")", "the sign's text"),
    ("video_qa((1, 2, 3), '  padded  ')", "padded"),
])
def test_video_qa_with_a_quoted_query_is_a_video_qa_action(call, query):
    action = parse_action(turn(f"<tool>{call}</tool>"), WIDTH)
    assert (action.kind, action.ids, action.query) == ("video_qa", (1, 2, 3), query)


def test_an_answer_is_an_answer_action_with_its_letter_stripped():
    action = parse_action(turn("\n<answer> B </answer>", think=" reasoning "), WIDTH)
    assert (action.kind, action.answer, action.think) == ("answer", "B", "reasoning")


def test_text_around_the_tags_is_allowed():
    text = "Okay.\n<think>\nline one\nline two\n</think>\n\n<tool>get_caption((2, 3))</tool>\n"
    action = parse_action(text, WIDTH)
    assert (action.kind, action.ids, action.think) == ("get_caption", (2, 3), "line one\nline two")


def test_without_require_think_a_bare_action_is_valid():
    assert parse_action("<tool>get_caption((1, 2))</tool>", WIDTH, require_think=False).ids == (1, 2)


def test_bytes_are_read_as_utf8():
    action = parse_action("<think>é</think><answer>C</answer>".encode(), WIDTH)
    assert (action.kind, action.answer, action.think) == ("answer", "C", "é")


# ---------------------------------------------------------------- parse_action: invalid forms

@pytest.mark.parametrize("text, message", [
    ("<tool>get_caption((1, 2))</tool>", r"think first.*<think></think>"),
    ("<answer>A</answer>", r"think first"),
    ("<think>unclosed <tool>get_caption((1, 2))</tool>", r"think first"),
    ("<think>Just thinking.</think>", r"no action"),
    ("<think>Maybe <tool>get_caption((1, 2))</tool> later.</think>", r"no action"),
    ("<think>Maybe <answer>A</answer>.</think>", r"no action"),
    ("</think><think>Maybe <tool>get_caption((1, 2))</tool>.</think>", r"no action"),
    (turn("<tool>get_caption((1, 2))</tool><tool>get_caption((1, 3))</tool>"), r"one action per round"),
    (turn("<tool>get_caption((1, 2))</tool><answer>A</answer>"), r"one action per round"),
    (turn("<answer>A</answer><answer>B</answer>"), r"one action per round"),
    (turn("<answer>  </answer>"), r"answer is empty"),
    (turn("<tool>get_caption((1, 2))"), r"unclosed tag"),
    (turn("<answer>A"), r"unclosed tag"),
    (turn("<tool>search((1, 2))</tool>"), r"unknown tool call 'search\(\(1, 2\)\)'"),
    (turn("<tool>get_caption</tool>"), r"unknown tool call 'get_caption'"),
    (turn("<tool>get_caption((1, 2)) please</tool>"), r"unknown tool call"),
    (turn("<tool>get_caption((1,))</tool>"), r"get_caption: expected 2 or 3 segment ids, got 1"),
    (turn("<tool>get_caption((1, 2, 3, 4))</tool>"), r"get_caption: expected 2 or 3 segment ids, got 4"),
    (turn("<tool>get_caption()</tool>"), r"get_caption: expected 2 or 3 segment ids, got 0"),
    (turn("<tool>get_caption(1)</tool>"), r"get_caption: segment ids must be a tuple.*got int"),
    (turn("<tool>get_caption([1, 2])</tool>"), r"get_caption: segment ids must be a tuple.*got list"),
    (turn("<tool>get_caption((5, 1))</tool>"), r"segment id 5 is out of range: ids run from 1 to 4"),
    (turn("<tool>get_caption((1, 0))</tool>"), r"segment id 0 is out of range"),
    (turn("<tool>get_caption((-1, 2, 3))</tool>"), r"segment id -1 is out of range"),
    (turn("<tool>get_caption((True, 2))</tool>"), r"segment ids must be integers, got True"),
    (turn("<tool>get_caption((1.0, 2))</tool>"), r"segment ids must be integers, got 1\.0"),
    (turn("<tool>get_caption(('1', 2))</tool>"), r"segment ids must be integers, got '1'"),
    (turn("<tool>get_caption(((1, 2), 3))</tool>"), r"segment ids must be integers, got \(1, 2\)"),
    (turn("<tool>get_caption((1, 2)</tool>"), r"cannot read the arguments of get_caption"),
    (turn("<tool>get_caption((h, m))</tool>"), r"cannot read the arguments of get_caption"),
    (turn('<tool>video_qa((1, 2), "what")</tool>'), r"video_qa: expected 3 segment ids, got 2"),
    (turn('<tool>video_qa((1, 2, 9), "what")</tool>'), r"video_qa: segment id 9 is out of range"),
    (turn("<tool>video_qa((1, 2, 3))</tool>"), r"video_qa takes a low-level segment and a question"),
    (turn('<tool>video_qa((1, 2, 3), "a", "b")</tool>'), r"video_qa takes a low-level segment and a question"),
    (turn("<tool>video_qa((1, 2, 3), 42)</tool>"), r"video_qa: the question must be a non-empty string"),
    (turn("<tool>video_qa((1, 2, 3), b'bytes')</tool>"), r"video_qa: the question must be a non-empty string"),
    (turn('<tool>video_qa((1, 2, 3), "   ")</tool>'), r"video_qa: the question must be a non-empty string"),
    (turn('<tool>video_qa((1, 2, 3), what colour)</tool>'), r"cannot read the arguments of video_qa"),
    (turn(f'<tool>video_qa((1, 2, 3), "{"x" * 2500}")</tool>'), r"video_qa: the question is 2500 characters"),
    (turn(f"<tool>get_caption(({' ' * 5000}1, 2))</tool>"), r"the tool call is \d+ characters long"),
    (turn(f"<tool>get_caption({'(' * 9}1, 2{')' * 9})</tool>"), r"nested too deeply"),
])
def test_a_malformed_turn_is_invalid_with_a_message_naming_the_problem(text, message):
    action = parse_action(text, WIDTH)
    assert action.kind == "invalid"
    assert action.ids is None and action.query is None and action.answer is None
    assert action.message
    assert re.search(message, action.message), action.message


@pytest.mark.parametrize("value", [None, 42, ["<think>x</think><answer>A</answer>"]])
def test_input_that_is_not_text_is_invalid(value):
    action = parse_action(value, WIDTH)
    assert action.kind == "invalid" and "expected text" in action.message


def test_the_think_text_is_kept_on_an_invalid_action():
    action = parse_action(turn("<tool>get_caption((9, 9))</tool>", think="look at 9"), WIDTH)
    assert (action.kind, action.think) == ("invalid", "look at 9")


@pytest.mark.parametrize("template", [
    "<tool>{code}</tool>",
    "<tool>get_caption({code})</tool>",
    "<tool>get_caption((1, 2), {code})</tool>",
    '<tool>video_qa((1, 2, 3), {code})</tool>',
    '<tool>video_qa((1, 2, 3), "q" if {code} else "r")</tool>',
    "<tool>get_caption((1, 2)) or {code}</tool>",
])
@pytest.mark.parametrize("code", [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w').write('x')",
    "exec(\"open('{marker}', 'w')\")",
    "[c for c in ().__class__.__base__.__subclasses__()]",
])
def test_calls_that_try_to_run_code_are_invalid_and_nothing_runs(tmp_path, template, code):
    marker = tmp_path / "ran"
    text = turn(template.format(code=code.format(marker=marker)))
    action = parse_action(text, WIDTH)
    assert action.kind == "invalid", action
    assert re.search(r"unknown tool call|cannot read the arguments|question must be", action.message)
    assert not marker.exists()



# ---------------------------------------------------------------- parse_action: fuzzing

def check_result(action: Action, width: int) -> None:
    assert isinstance(action, Action)
    assert action.kind in KINDS
    if action.kind == "invalid":
        assert isinstance(action.message, str) and action.message
        return
    assert action.message is None
    if action.kind in ("get_caption", "video_qa"):
        assert isinstance(action.ids, tuple)
        assert len(action.ids) in ((2, 3) if action.kind == "get_caption" else (3,))
        for i in action.ids:
            assert type(i) is int and 1 <= i <= width
    if action.kind == "video_qa":
        assert isinstance(action.query, str) and action.query.strip()
    if action.kind == "answer":
        assert isinstance(action.answer, str) and action.answer.strip() == action.answer != ""


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(), st.integers(3, 8), st.booleans())
def test_parse_action_never_raises_on_arbitrary_text(text, width, require_think):
    check_result(parse_action(text, width, require_think), width)


@FUZZ
@given(st.binary(), st.integers(3, 8))
def test_parse_action_never_raises_on_arbitrary_bytes(data, width):
    check_result(parse_action(data, width), width)


TAG_SOUP = st.lists(st.sampled_from(["<think>", "</think>", "<tool>", "</tool>", "<answer>", "</answer>",
                                     "get_caption(", "video_qa(", "(", ")", ",", "1", "2", "'q'", "x", " "]),
                    max_size=30).map("".join)


@FUZZ
@given(TAG_SOUP, st.integers(3, 8))
def test_parse_action_never_raises_on_tag_soup(text, width):
    check_result(parse_action(text, width), width)


ODD_ATOMS = st.one_of(st.booleans(), st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.just(1j),
                     st.integers(-10**30, 10**30))


def segment(depth: int = 2):
    """A tuple of ids that is mostly plausible: small ints, now and then a bool, float, string or nested tuple."""
    plausible = st.integers(1, 8).map(str)
    element = st.one_of(*[plausible] * 8, st.integers(-1, 12).map(str), ODD_ATOMS.map(repr),
                        *([segment(depth - 1)] if depth else []))
    size = st.sampled_from([2, 3, 3, 0, 1, 4, 5])
    return st.tuples(size.flatmap(lambda n: st.lists(element, min_size=n, max_size=n)),
                     st.sampled_from(["("] * 5 + ["["]), st.booleans()).map(
        lambda t: t[1] + ", ".join(t[0]) + ("," if len(t[0]) == 1 or t[2] else "") + {"(": ")", "[": "]"}[t[1]])


@st.composite
def near_miss_calls(draw):
    name = draw(st.sampled_from(["get_caption"] * 4 + ["video_qa"] * 4 + ["get_captions", "Video_QA", "", "eval"]))
    args = [draw(segment())]
    if not draw(st.integers(0, 3)):  # the bare spelling get_caption(1, 2) instead of get_caption((1, 2))
        args = [args[0][1:-1]]
    if draw(st.integers(0, 5)) < (4 if name == "video_qa" else 1):  # a query, in one of several quotings
        quote = draw(st.sampled_from(['"', '"', "'", '"""', "", "b'"]))
        body = draw(st.text(max_size=20).filter(lambda t: "\\" not in t))
        args.append(f"{quote}{body}{quote.lstrip('b')}")
    if not draw(st.integers(0, 5)):
        args.append(draw(ODD_ATOMS.map(repr)))
    sep = draw(st.sampled_from([", ", ",", " , ", ",\n"]))
    opener, closer = draw(st.sampled_from([("(", ")")] * 6 + [("((", "))"), ("(", ""), ("", ")")]))
    return f"<think>x</think><tool>{name}{opener}{sep.join(args)}{closer}</tool>"


@FUZZ
@given(near_miss_calls(), st.integers(3, 8))
def test_parse_action_never_raises_on_random_literal_arguments(text, width):
    check_result(parse_action(text, width), width)


HARMLESS = {"single quotes", "bare ids", "spaces"}
MUTATIONS = sorted(HARMLESS | {"id too big", "id zero", "id negative", "id bool", "id float", "id string",
                               "id nested", "drop id", "extra id", "rename", "drop query", "extra argument",
                               "unclosed", "query not a string", "empty query", "no think", "answer too"})
# A query as a model writes it: printable text without quotes or backslashes (NUL cannot be in Python source).
QUERY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"), exclude_characters="\"'\\<"),
                     min_size=1, max_size=30)


@st.composite
def mutated_calls(draw):
    """A valid call with zero or more mutations: (width, expected action or None if mutated, text)."""
    width = draw(st.integers(3, 8))
    kind = draw(st.sampled_from(["get_caption", "video_qa"]))
    ids = [draw(st.integers(1, width)) for _ in range(3 if kind == "video_qa" else draw(st.sampled_from([2, 3])))]
    query = draw(QUERY_TEXT.filter(str.strip))
    mutations = set(draw(st.lists(st.sampled_from(MUTATIONS), max_size=3)))
    tokens = [str(i) for i in ids]
    position = draw(st.integers(0, len(tokens) - 1))
    replacements = {"id too big": str(width + draw(st.integers(1, 10**6))), "id zero": "0",
                    "id negative": str(-draw(st.integers(1, 9))), "id bool": draw(st.sampled_from(["True", "False"])),
                    "id float": f"{ids[position]}.0", "id string": repr(str(ids[position])),
                    "id nested": f"({ids[position]}, {ids[position]})"}
    for mutation, token in replacements.items():
        if mutation in mutations:
            tokens[position] = token
    if "drop id" in mutations:
        tokens.pop()
    if "extra id" in mutations:
        tokens.append("1")
    sep = ",  " if "spaces" in mutations else ","
    segment = sep.join(tokens)
    args = [segment if "bare ids" in mutations and kind == "get_caption" else f"({segment})"]
    if kind == "video_qa":
        quote = "'" if "single quotes" in mutations else '"'
        if "query not a string" in mutations:
            args.append(draw(st.sampled_from(["42", "None", "(1, 2)", "[q]", "b'q'"])))
        elif "empty query" in mutations:
            args.append(quote + " " * draw(st.integers(0, 3)) + quote)
        elif "drop query" not in mutations:
            args.append(f"{quote}{query}{quote}")
    if "extra argument" in mutations:
        args.append("'more'")
    name = draw(st.sampled_from(["get_captions", "Video_QA", "eval", "getcaption"])) if "rename" in mutations else kind
    call = f"{name}({sep.join(args)}" + ("" if "unclosed" in mutations else ")")
    text = ("" if "no think" in mutations else "<think>x</think>") + f"<tool>{call}</tool>" \
        + ("<answer>A</answer>" if "answer too" in mutations else "")
    expected = Action(kind, tuple(ids), query.strip() if kind == "video_qa" else None, think="x") \
        if mutations <= HARMLESS else None
    return width, expected, text


@FUZZ
@given(mutated_calls())
def test_mutated_tool_calls_parse_exactly_or_not_at_all(case):
    width, expected, text = case
    action = parse_action(text, width)
    check_result(action, width)
    if expected is not None:
        assert action == expected, text


@st.composite
def well_formed_calls(draw):
    width = draw(st.integers(3, 8))
    ids = tuple(draw(st.lists(st.integers(1, width), min_size=2, max_size=3)))
    spaced = draw(st.sampled_from([",", ", ", " , "]))
    inner = spaced.join(map(str, ids))
    call = draw(st.sampled_from([f"get_caption(({inner}))", f"get_caption({inner})"]))
    return width, ids, f"<think>{draw(st.text(max_size=40).filter(lambda t: '</think>' not in t))}</think>" \
                       f"<tool>{call}</tool>"


@FUZZ
@given(well_formed_calls())
def test_well_formed_get_caption_calls_round_trip_their_ids(case):
    width, ids, text = case
    action = parse_action(text, width)
    assert (action.kind, action.ids) == ("get_caption", ids), action


# ---------------------------------------------------------------- hostile input returns promptly

HOSTILE = {
    "10 MB of text": "a" * 10_000_000,
    "10 MB of reasoning then an answer": "<think>" + "b" * 10_000_000 + "</think><answer>A</answer>",
    "100k nested parentheses in a call": turn("<tool>get_caption(" + "(" * 100_000 + ")" * 100_000 + ")</tool>"),
    "4k nested parentheses in a short call": turn("<tool>get_caption(" + "(" * 2000 + ")" * 2000 + ")</tool>"),
    "deep unary minus": turn("<tool>get_caption(" + "-" * 4000 + "1, 2)</tool>"),
    "1 MB of <tool> tags": turn("<tool>" * 170_000),
    "1 MB of tool calls": turn("<tool>get_caption((1, 2))</tool>" * 33_000),
    "1 MB of </think>": "</think>" * 130_000 + "<answer>A</answer>",
    "NUL bytes in a call": turn("<tool>get_caption((1,\x002))</tool>"),
    "1 MB of NUL bytes": "\x00" * 1_000_000,
    "NUL bytes around an answer": "\x00<think>\x00</think>\x00<answer>A\x00</answer>\x00",
    "invalid UTF-8 bytes": b"<think>\xff\xfe\xfa</think><tool>get_caption((1, \xc0\xaf2))</tool>",
    "1 MB of invalid UTF-8": b"\xff" * 1_000_000,
    "lone surrogates": turn("<tool>video_qa((1, 2, 3), '\ud800')</tool>"),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_returns_promptly_without_raising(name):
    check_result(parse_action(HOSTILE[name], WIDTH), WIDTH)


@pytest.mark.timeout(20)
def test_a_valid_answer_after_ten_megabytes_of_reasoning_is_still_read():
    action = parse_action(HOSTILE["10 MB of reasoning then an answer"], WIDTH)
    assert (action.kind, action.answer) == ("answer", "A")
