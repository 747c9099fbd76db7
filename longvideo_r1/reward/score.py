"""Scoring a finished episode (PROTOCOL §3) as plain functions: no Ray, no torch.

``score = w_answer·answer + w_f1·F1 + w_repeat·repeat``

* ``answer`` is 1 when the content of the last ``<answer>…</answer>``, stripped, equals the ground
  truth exactly.
* ``F1`` measures how well the visited segments localise the clue intervals: the clues are merged
  (an interval joins the running group when it starts at most ``clue_merge_gap`` seconds after the
  group's end), the visited time ranges are merged into their union, and
  ``coverage = overlap / clue length``, ``precision = overlap / visited length``. Because both sides
  are disjoint unions, coverage and precision, hence F1, always lie in [0, 1].
* ``repeat = (calls − distinct calls) / distinct calls`` over the ``get_caption`` calls.
* Questions without clue intervals are scored on the answer alone.

Only calls that the episode itself accepts count: a ``<tool>`` whose content
:func:`longvideo_r1.agent.protocol.parse_call` reads as a valid ``get_caption`` (2 or 3 ids in range).

``reference_compat=True`` switches to :func:`reference_score`, which re-creates the numbers of the
reference implementation, defects included (its docstring lists them).

:func:`compute_score` has verl's custom-reward signature, so this file can be given to verl as
``custom_reward_function.path`` (name ``compute_score``); ``reward_kwargs`` become keyword overrides
of :class:`RewardConfig`.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from numbers import Real

from longvideo_r1.agent.protocol import parse_call
from longvideo_r1.corpus.tree import check_ids, segment_interval
from longvideo_r1.errors import InputError

FULL_SOURCES = ("videocaption_cgbench", "lvr1_demo")
"""Data sources scored on answer, localisation and repeats."""
ANSWER_ONLY_SOURCES = ("videocaption_videomme",)
"""Data sources scored on the answer alone (no clue intervals exist for them)."""
DATA_SOURCES = FULL_SOURCES + ANSWER_ONLY_SOURCES
REQUIRED_EXTRA_INFO = ("width", "duration", "clue_intervals")


def reward_source(question) -> str:
    """The data source a question is scored under: its own if the reward knows it, else by its clues
    (with clue intervals: answer, localisation and repeats; without: the answer alone). LVBench and
    MLVU questions, for example, are scored as CG-Bench and Video-MME ones."""
    if question.data_source in DATA_SOURCES:
        return question.data_source
    return FULL_SOURCES[0] if question.clue_intervals else ANSWER_ONLY_SOURCES[0]
# Keyword arguments that verl hands to its own scorers; accepted here and ignored.
VERL_KWARGS = frozenset({"sandbox_fusion_url", "concurrent_semaphore", "memory_limit_mb"})

Interval = tuple[float, float]


@dataclass(frozen=True)
class RewardConfig:
    w_answer: float = 1.0
    """weight of the answer term (1 for a correct final answer, else 0)"""
    w_f1: float = 1.0
    """weight of the localisation F1 between visited segments and clue intervals"""
    w_repeat: float = -0.2
    """weight of the repeat ratio (calls − distinct) / distinct; negative to penalise repeats"""
    clue_merge_gap: float = 5.0
    """seconds: clue intervals separated by at most this gap are merged into one"""
    reference_compat: bool = False
    """reproduce the reference implementation's numbers exactly, its defects included"""

    def __post_init__(self):
        for name in ("w_answer", "w_f1", "w_repeat", "clue_merge_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise InputError(f"reward setting {name}={value!r}: give a finite number")
        if self.clue_merge_gap < 0:
            raise InputError(f"reward setting clue_merge_gap={self.clue_merge_gap!r}: give 0 or more seconds")
        if not isinstance(self.reference_compat, bool):
            raise InputError(f"reward setting reference_compat={self.reference_compat!r}: give true or false")


CONFIG_FIELDS = tuple(f.name for f in fields(RewardConfig))


# ---------------------------------------------------------------- intervals

def _merge(intervals: Iterable[Interval], gap: float) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start - merged[-1][1] <= gap:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def merge_clues(intervals: Iterable[Interval], gap: float = 5.0) -> list[Interval]:
    """Sort clue intervals and merge each into the running group when it starts at most ``gap``
    seconds after the group's furthest end. The result is sorted and disjoint."""
    return _merge(intervals, gap)


def union_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of intervals as a sorted list of disjoint ones (touching intervals join)."""
    return _merge(intervals, 0.0)


def total_length(intervals: Iterable[Interval]) -> float:
    return float(sum(end - start for start, end in intervals))


def overlap_length(a: Iterable[Interval], b: Iterable[Interval]) -> float:
    """Length of the intersection of the union of ``a`` with the union of ``b``."""
    a, b = union_intervals(a), union_intervals(b)
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def localisation_f1(visited: Iterable[Interval], clues: Iterable[Interval]) -> tuple[float, float, float]:
    """``(coverage, precision, F1)`` of visited ranges against (already merged) clue intervals."""
    visited, clues = union_intervals(visited), union_intervals(clues)
    overlap = overlap_length(visited, clues)
    clue_len, visited_len = total_length(clues), total_length(visited)
    # min(1, ·) only absorbs float rounding: the overlap of two unions never exceeds either.
    coverage = min(1.0, overlap / clue_len) if clue_len > 0 else 0.0
    precision = min(1.0, overlap / visited_len) if visited_len > 0 else 0.0
    f1 = 2 * coverage * precision / (coverage + precision) if coverage + precision > 0 else 0.0
    return coverage, precision, f1


# ---------------------------------------------------------------- validation

def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _geometry(width, duration) -> tuple[int, float]:
    if not _number(width) or width != int(width) or width < 1:
        raise InputError(f"extra_info width={width!r}: give the caption tree's width, an integer of 1 or more")
    if not _number(duration) or duration <= 0:
        raise InputError(f"extra_info duration={duration!r}: give the video's duration in seconds, above 0")
    return int(width), float(duration)


def _clue_list(clues) -> list[Interval]:
    if clues is None:
        return []
    if isinstance(clues, (str, bytes)) or not isinstance(clues, Iterable):
        raise InputError(f"extra_info clue_intervals={clues!r}: give a list of [start, end] pairs in seconds")
    out = []
    for k, pair in enumerate(clues):
        values = None if isinstance(pair, (str, bytes)) or not isinstance(pair, Iterable) else list(pair)
        if values is None or len(values) != 2 or not all(_number(v) for v in values) or values[1] < values[0]:
            raise InputError(f"extra_info clue_intervals[{k}]={pair!r}: each clue must be [start, end] "
                             "in seconds with start <= end")
        out.append((float(values[0]), float(values[1])))
    return out


def _text(solution_str) -> str:
    if isinstance(solution_str, str):
        return solution_str
    if isinstance(solution_str, (bytes, bytearray)):
        return bytes(solution_str).decode("utf-8", "replace")
    raise InputError(f"solution_str: expected the episode's text, got {type(solution_str).__name__}")


# ---------------------------------------------------------------- extraction

def _tag_contents(text: str, name: str) -> list[str]:
    """Contents of ``<name>…</name>`` pairs scanned left to right, each closing at the first
    ``</name>`` after its opening (what a lazy DOTALL regex finds).

    The scan stops at the last closing tag, so an opening tag without a closing one after it is
    never searched past: the cost stays linear however many unclosed tags the text holds.
    """
    close = f"</{name}>"
    last = text.rfind(close)
    if last < 0:
        return []
    return re.findall(f"<{name}>(.*?){close}", text[:last + len(close)], re.DOTALL)


def last_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>…</answer>``, or None when there is none."""
    answers = _tag_contents(text, "answer")
    return answers[-1].strip() if answers else None


_UNSET = object()


def get_caption_calls(text: str, width: int) -> list[tuple[int, ...]]:
    """Segment ids of every ``<tool>`` in ``text`` that is a valid ``get_caption`` for ``width``, in order."""
    calls, parsed = [], {}
    for content in _tag_contents(text, "tool"):
        if not content.lstrip().startswith("get_caption"):
            continue
        ids = parsed.get(content, _UNSET)
        if ids is _UNSET:
            action = parse_call(content, width)
            ids = parsed[content] = action.ids if action.kind == "get_caption" else None
        if ids is not None:
            calls.append(ids)
    return calls


# ---------------------------------------------------------------- the fixed reward

def _reward(config: RewardConfig, answer: float, f1: float, repeat: float) -> dict:
    return {"score": float(config.w_answer * answer + config.w_f1 * f1 + config.w_repeat * repeat),
            "answer_reward": float(answer), "f1_reward": float(f1), "repeat_reward": float(repeat)}


def _answer_reward(answer: str | None, ground_truth) -> float:
    if not isinstance(ground_truth, str):
        raise InputError(f"ground_truth {ground_truth!r}: give the correct answer as text (an option letter)")
    return 1.0 if answer is not None and answer.strip() == ground_truth else 0.0


def score_calls(answer: str | None, ground_truth: str, get_caption_ids: Iterable[tuple[int, ...]],
                width: int, duration: float, clue_intervals, config: RewardConfig | None = None) -> dict:
    """The reward of an episode given as structured data (the fixed formula).

    ``answer`` is the final answer (None when there was none), ``get_caption_ids`` the segment ids
    of the get_caption calls in order, ``clue_intervals`` ``[[start, end], …]`` in seconds or None.
    """
    config = config or RewardConfig()
    answer_reward = _answer_reward(answer, ground_truth)
    width, duration = _geometry(width, duration)
    clues = merge_clues(_clue_list(clue_intervals), config.clue_merge_gap)
    if not clues:
        return _reward(config, answer_reward, 0.0, 0.0)
    calls = [check_ids(ids, width, "get_caption segment") for ids in get_caption_ids]
    if not calls:
        return _reward(config, answer_reward, 0.0, 0.0)
    distinct = len(set(calls))
    repeat = (len(calls) - distinct) / distinct
    _, _, f1 = localisation_f1([segment_interval(ids, width, duration) for ids in calls], clues)
    return _reward(config, answer_reward, f1, repeat)


# ---------------------------------------------------------------- the reference's numbers

_LENIENT_CALL = re.compile(r"(\w+)\((.*)\)")


def _lenient_call(content: str):
    """``(name, args, parsed)`` the reference's way: a word, '(', then everything up to the last ')'
    on the first line, read with ``literal_eval``; anything it cannot read gives ``parsed=False``."""
    match = _LENIENT_CALL.match(content.strip())
    if match is None:
        return None, None, False
    arg_text = match.group(2).strip()
    try:
        return match.group(1), (ast.literal_eval(arg_text) if arg_text else ()), True
    except Exception:
        return match.group(1), arg_text, False


def _ref_range(seg, duration, width):
    high = duration / width
    medium = duration / (width ** 2)
    low = duration / (width ** 3)
    depth = len(seg)
    if depth == 1:
        start = (seg[0] - 1) * high
        return [start, min(duration, start + high)]
    if depth == 2:
        start = (seg[0] - 1) * high + (seg[1] - 1) * medium
        return [start, min(duration, start + medium)]
    if depth == 3:
        start = (seg[0] - 1) * high + (seg[1] - 1) * medium + (seg[2] - 1) * low
        return [start, min(duration, start + low)]
    return [0, 0]


def _ref_length(interval):
    return max(0.0, interval[1] - interval[0])


def _ref_merge_clues(intervals, gap):
    # Each interval is compared with its predecessor in start order only, not with the group's
    # furthest end, so a long clue followed by short ones can leave overlapping "merged" clues.
    if not intervals:
        return []
    if len(intervals) == 1:
        return intervals
    ordered = sorted(intervals, key=lambda iv: iv[0])
    groups = [[ordered[0]]]
    for previous, current in zip(ordered, ordered[1:]):
        if current[0] - previous[1] <= gap:
            groups[-1].append(current)
        else:
            groups.append([current])
    return [[min(iv[0] for iv in group), max(iv[1] for iv in group)] for group in groups]


def _ref_union_length(intervals):
    ordered = sorted(intervals, key=lambda iv: iv[0])
    pieces = []
    lo, hi = ordered[0]
    for start, end in ordered[1:]:
        if start <= hi:
            hi = max(hi, end)
        else:
            pieces.append((lo, hi))
            lo, hi = start, end
    pieces.append((lo, hi))
    return sum(_ref_length(p) for p in pieces)


def _ref_pairwise_overlap(visited, clues):
    total = 0.0
    for v in visited:
        for c in clues:
            total += max(0.0, min(v[1], c[1]) - max(v[0], c[0]))
    return total


def reference_score(solution_str: str, ground_truth, extra_info: Mapping,
                    config: RewardConfig | None = None) -> dict:
    """The reference implementation's numbers for a full-reward question, defects included.

    Differences from :func:`score_calls`, all deliberate here:

    * the overlap is summed over every (visited, clue) pair, so nested or repeated visits count
      several times and coverage, precision and F1 can exceed 1;
    * clues are merged by comparing each with its predecessor only (see ``_ref_merge_clues``);
    * a call is any ``<tool>`` content matching ``word(…)`` up to the last ')' of its first line whose
      arguments ``literal_eval`` reads and have a length below 4: high-level ``(h,)``, empty ``()``
      (visited range ``[0, 0]``), out-of-range or zero/negative ids, floats and bools all count;
    * an exception part-way (arguments without a length, unhashable ones, non-numeric ids, missing
      width or duration) keeps what was computed before it: answer only if it happens while
      collecting calls or de-duplicating them, answer and repeat if later;
    * questions without clues still pay the repeat penalty.

    ``config`` supplies the weights and the merge gap (the reference's values by default).
    """
    config = config or RewardConfig()
    if not hasattr(extra_info, "get"):
        raise InputError(f"extra_info {extra_info!r}: give a mapping with width, duration and clue_intervals")
    answer = last_answer(solution_str)
    answer_reward = 1 if answer is not None and answer == ground_truth else 0
    clues, width, duration = (extra_info.get(k) for k in ("clue_intervals", "width", "duration"))
    f1 = repeat = 0
    tools = _tag_contents(solution_str, "tool")
    seen: dict[str, tuple] = {}    # the same text always reads the same way; parse it once
    try:
        calls = []
        for content in tools:
            if content not in seen:
                seen[content] = _lenient_call(content)
            name, args, parsed = seen[content]
            if name == "get_caption" and parsed and len(args) < 4:
                calls.append(args)
        if calls:
            distinct = len(set(calls))
            repeat = (len(calls) - distinct) / distinct
            merged = _ref_merge_clues(clues, config.clue_merge_gap)
            visited = [_ref_range(seg, duration, width) for seg in calls]
            clue_len = sum(_ref_length(c) for c in merged)
            overlap = _ref_pairwise_overlap(visited, merged)
            visited_len = _ref_union_length(visited)
            coverage = overlap / clue_len if clue_len > 0 else 0.0
            precision = overlap / visited_len if visited_len > 0 else 0.0
            f1 = 2 * coverage * precision / (coverage + precision) if coverage + precision > 0 else 0.0
    except Exception:
        pass  # the reference returns whatever it had computed when the exception came
    return _reward(config, answer_reward, f1, repeat)


# ---------------------------------------------------------------- verl entry point

def _config_from(kwargs: dict) -> RewardConfig:
    base = kwargs.pop("config", None)
    if base is None:
        base = RewardConfig()
    elif not isinstance(base, RewardConfig):
        raise InputError(f"compute_score config={base!r}: give a RewardConfig")
    unknown = sorted(set(kwargs) - set(CONFIG_FIELDS) - VERL_KWARGS)
    if unknown:
        raise InputError(f"compute_score: unknown reward setting(s) {', '.join(unknown)}; "
                         f"known settings are {', '.join(CONFIG_FIELDS)}")
    overrides = {k: v for k, v in kwargs.items() if k in CONFIG_FIELDS}
    return replace(base, **overrides) if overrides else base


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom-reward entry point: ``{"score", "answer_reward", "f1_reward", "repeat_reward"}``.

    ``kwargs`` may hold ``config=RewardConfig(...)`` and/or any :class:`RewardConfig` field as an
    override (``reference_compat=True``, ``w_repeat=-0.1``, …). Full-reward sources need
    ``extra_info`` with ``width``, ``duration`` and ``clue_intervals`` (which may be None or empty).
    """
    config = _config_from(dict(kwargs))
    if data_source not in DATA_SOURCES:
        raise InputError(f"data source {data_source!r} has no reward function; "
                         f"known data sources: {', '.join(DATA_SOURCES)}")
    text = _text(solution_str)
    if data_source in ANSWER_ONLY_SOURCES:
        answer = last_answer(text)
        if config.reference_compat:
            return _reward(config, 1 if answer is not None and answer == ground_truth else 0, 0, 0)
        return _reward(config, _answer_reward(answer, ground_truth), 0.0, 0.0)
    if not isinstance(extra_info, Mapping):
        raise InputError(f"extra_info for data source {data_source!r}: give a mapping with "
                         f"{', '.join(REQUIRED_EXTRA_INFO)}, got {type(extra_info).__name__}")
    missing = [k for k in REQUIRED_EXTRA_INFO if k not in extra_info]
    if missing:
        raise InputError(f"extra_info for data source {data_source!r} lacks {', '.join(missing)}: "
                         "each row needs the caption tree's width, the video duration and the clue intervals")
    if config.reference_compat:
        return reference_score(text, ground_truth, extra_info, config)
    width, _ = _geometry(extra_info["width"], extra_info["duration"])
    return score_calls(last_answer(text), ground_truth, get_caption_calls(text, width), width,
                       extra_info["duration"], extra_info["clue_intervals"], config)
