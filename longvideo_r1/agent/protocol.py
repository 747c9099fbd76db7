"""The navigation protocol (PROTOCOL §2): prompts, observation strings and the action grammar.

Everything here is pure text processing. The first user turn and every observation string are
byte-for-byte what the reference data uses, so trajectories are interchangeable with it. The
system prompt is our own wording; users can supply their own template file (placeholders
``{width}`` and ``{max_rounds}``).

``parse_action`` turns one assistant turn into an :class:`Action`. It never raises and never
executes anything: tool arguments are parsed with ``ast.literal_eval`` after size and nesting
checks, so huge, deeply nested or binary input stays cheap and is reported as ``invalid``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from longvideo_r1.errors import InputError

STOP_STRINGS = ("</tool>", "</answer>")
LAST_ROUND_NOTE = "This is the last round. You must provide the final answer in this round."
QUESTION_PREFIX = ("Select the best answer to the following multiple-choice question based on the video. "
                   "Respond with only the letter (A, B, C, or D) of the correct option.")

# Bounds that keep parsing cheap on hostile input; a real call is a few dozen characters.
MAX_CALL_CHARS = 4096
MAX_QUERY_CHARS = 2000
MAX_NESTING = 8

DEFAULT_SYSTEM_PROMPT = """\
You answer questions about a long video that you cannot watch directly. Instead you navigate a tree \
of captions that describe it at three levels of detail:
- High level: the video is cut into {width} consecutive segments, numbered 1 to {width}. You are \
given the caption of every high-level segment at the start.
- Medium level: each high-level segment h is cut into {width} parts, addressed as (h, m).
- Low level: each medium-level part (h, m) is cut into {width} short clips, addressed as (h, m, l).
Every id is an integer from 1 to {width}.

Two tools let you look closer:
- get_caption((h, m)) returns the medium-level caption of part (h, m); get_caption((h, m, l)) \
returns the low-level caption of clip (h, m, l).
- video_qa((h, m, l), "question") shows the frames of low-level clip (h, m, l) to a vision-language \
model and returns its answer to your question. Ask for exactly the detail you need (a word on a \
sign, a colour, what someone does). You may only use it on a clip whose low-level caption you have \
already read with get_caption.

In every round, first reason inside <think></think>: what do you know, what is missing, and where \
in the video is it most likely to be? Then do exactly one of these:
<tool>get_caption((h, m))</tool>
<tool>get_caption((h, m, l))</tool>
<tool>video_qa((h, m, l), "what exactly to look for")</tool>
<answer>the letter of your answer</answer>
Call one tool per round. Answer as soon as the information you have is enough: every extra call \
costs time. You have at most {max_rounds} rounds; in the last one you must answer.
"""


def load_system_template(path: str | Path | None) -> str:
    """The system prompt template: ours, or a user's file with ``{width}`` (and optionally ``{max_rounds}``)."""
    if path is None:
        return DEFAULT_SYSTEM_PROMPT
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"system prompt template {path}: cannot be read ({exc.strerror})") from None
    if "{width}" not in text:
        raise InputError(f"system prompt template {path}: it must contain the placeholder {{width}}")
    return text


def system_prompt(width: int, max_rounds: int = 30, template: str = DEFAULT_SYSTEM_PROMPT) -> str:
    # Plain replacement, not str.format: user templates may contain other braces (JSON examples).
    return template.replace("{width}", str(width)).replace("{max_rounds}", str(max_rounds))


def format_options(options: list[str]) -> list[str]:
    """``["red", "blue"]`` -> ``["A. red", "B. blue"]``; options already lettered are kept."""
    out = []
    for i, option in enumerate(options):
        letter = chr(ord("A") + i)
        text = str(option).strip()
        out.append(text if text[:2] in (f"{letter}.", f"{letter})") else f"{letter}. {text}")
    return out


def first_user_turn(question: str, options: list[str] | None, duration: float,
                    high_captions: list[tuple[float, float, str]]) -> str:
    """The first user message exactly as the reference RL data writes it.

    ``high_captions`` holds ``(first frame time, last frame time, caption)`` of each high segment.
    """
    content = f"{question}\n" + ("\n".join(format_options(options)) + "\n" if options else "")
    lines = "\n".join(f"High-level Caption {i} from {t0} to {t1}:{text}"
                      for i, (t0, t1, text) in enumerate(high_captions, start=1))
    return f"{content}\n\nThe total duration of the video is {format_seconds(duration)} seconds.\n\n{lines}\n\n"


def format_seconds(t: float) -> str:
    """Durations print like the reference data (Python floats), without float noise."""
    return str(round(float(t), 2))


def caption_observation(ids: tuple[int, ...], start: float, end: float, caption: str) -> str:
    joined = ",".join(str(i) for i in ids)
    level = "Medium" if len(ids) == 2 else "Low"
    return f"{level}-level Caption from tool get_caption(({joined})). From {start} to {end}:{caption}"


def video_qa_observation(answer: str) -> str:
    return f"<information>{answer}</information>"


# ---------------------------------------------------------------- actions

@dataclass(frozen=True)
class Action:
    """One parsed assistant turn. ``kind``: ``get_caption``, ``video_qa``, ``answer`` or ``invalid``."""

    kind: str
    ids: tuple[int, ...] | None = None
    query: str | None = None
    answer: str | None = None
    message: str | None = None      # what was wrong, for ``invalid``
    think: str | None = None

    @property
    def call(self) -> str | None:
        """The canonical text of a tool call, e.g. ``get_caption((1,2,3))``."""
        if self.kind == "get_caption":
            return f"get_caption(({','.join(map(str, self.ids))}))"
        if self.kind == "video_qa":
            return f"video_qa(({','.join(map(str, self.ids))}), {self.query!r})"
        return None


def _invalid(message: str, think: str | None = None) -> Action:
    return Action("invalid", message=message, think=think)


def _tag(text: str, name: str) -> tuple[str | None, int]:
    """Content of the first ``<name>…</name>`` and how many opening tags there are."""
    open_tag, close_tag = f"<{name}>", f"</{name}>"
    count = text.count(open_tag)
    start = text.find(open_tag)
    if start < 0:
        return None, 0
    end = text.find(close_tag, start + len(open_tag))
    if end < 0:
        return None, count
    return text[start + len(open_tag): end], count


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _short(value, limit: int = 40) -> str:
    """A value as the corrective note quotes it: never more than ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_segment(ids, width: int, size: tuple[int, ...]) -> str | None:
    if not isinstance(ids, tuple):
        return f"segment ids must be a tuple like (1, 2, 3), got {type(ids).__name__}"
    if len(ids) not in size:
        return f"expected {' or '.join(map(str, size))} segment ids, got {len(ids)}"
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            return f"segment ids must be integers, got {_short(i)}"
        if not 1 <= i <= width:
            return f"segment id {_short(i)} is out of range: ids run from 1 to {width}"
    return None


def parse_call(call: str, width: int) -> Action:
    """Parse the inside of ``<tool>…</tool>``: ``get_caption((h, m[, l]))`` or ``video_qa((h, m, l), "q")``."""
    call = call.strip()
    if len(call) > MAX_CALL_CHARS:
        return _invalid(f"the tool call is {len(call)} characters long; a call is a name and a few ids")
    paren = call.find("(")
    name = call[:paren].strip() if paren > 0 else ""
    if name not in ("get_caption", "video_qa") or not call.endswith(")"):
        return _invalid(f"unknown tool call {call[:60]!r}: use get_caption((h, m)), get_caption((h, m, l)) "
                        "or video_qa((h, m, l), \"question\")")
    arg_text = call[paren + 1: -1].strip()
    if _nesting(arg_text) > MAX_NESTING:
        return _invalid("the tool arguments are nested too deeply")
    try:
        args = ast.literal_eval(arg_text) if arg_text else ()
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        example = 'video_qa((1, 2, 3), "what to look for")' if name == "video_qa" else "get_caption((1, 2, 3))"
        return _invalid(f"cannot read the arguments of {name}: write them as Python literals, e.g. {example}")
    if name == "get_caption":
        # Both get_caption((1, 2)) and get_caption(1, 2) give the tuple (1, 2), as in the reference.
        problem = _check_segment(args, width, (2, 3))
        if problem:
            return _invalid(f"get_caption: {problem}")
        return Action("get_caption", ids=args)
    if not (isinstance(args, tuple) and len(args) == 2):
        return _invalid("video_qa takes a low-level segment and a question: video_qa((h, m, l), \"question\")")
    ids, query = args
    problem = _check_segment(ids, width, (3,))
    if problem:
        return _invalid(f"video_qa: {problem}")
    if not isinstance(query, str) or not query.strip():
        return _invalid("video_qa: the question must be a non-empty string in quotes")
    if len(query) > MAX_QUERY_CHARS:
        return _invalid(f"video_qa: the question is {len(query)} characters long; keep it under {MAX_QUERY_CHARS}")
    return Action("video_qa", ids=ids, query=query.strip())


def parse_action(text, width: int, require_think: bool = True) -> Action:
    """Parse one assistant turn; never raises. ``width`` bounds the segment ids."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return _invalid(f"expected text, got {type(text).__name__}")
    think, _ = _tag(text, "think")
    think = think.strip() if think is not None else None
    if require_think and think is None:
        return _invalid("think first: write your reasoning inside <think></think>, then one <tool> or <answer>")
    # Look for the action after the reasoning, so tags quoted inside <think> do not count. The end of
    # the reasoning is the </think> that closes the <think> read above, not a stray one before it.
    if think is not None:
        opened = text.find("<think>") + len("<think>")
        rest = text[text.find("</think>", opened) + len("</think>"):]
    else:
        rest = text
    tool, n_tools = _tag(rest, "tool")
    answer, n_answers = _tag(rest, "answer")
    if n_tools + n_answers == 0:
        return _invalid("no action: end the round with one <tool>…</tool> or <answer>…</answer>", think)
    if n_tools + n_answers > 1:
        return _invalid("one action per round: give exactly one <tool>…</tool> or <answer>…</answer>", think)
    if answer is not None:
        answer = answer.strip()
        if not answer:
            return _invalid("the answer is empty: put the option letter inside <answer></answer>", think)
        return Action("answer", answer=answer, think=think)
    if tool is None:
        return _invalid("unclosed tag: close the action with </tool> or </answer>", think)
    action = parse_call(tool, width)
    return Action(action.kind, action.ids, action.query, action.answer, action.message, think)


def reference_answer(text: str) -> str | None:
    """The answer the reference tool server reads from a round, whatever our rules say of it: the
    stripped content of the first ``<answer>…</answer>`` anywhere in the text (inside ``<think>``
    too, empty allowed), when the text holds no complete ``<tool>…</tool>``; else None."""
    if not isinstance(text, str):
        return None
    tool, _ = _tag(text, "tool")
    answer, _ = _tag(text, "answer")
    if tool is not None or answer is None:
        return None
    return answer.strip()
