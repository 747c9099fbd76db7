"""SFT teachers: play a navigation episode per training question and hand back a clean trajectory.

Two teachers share one result type (:class:`TeacherResult`):

- :class:`OracleTeacher` is the oracle baseline with truth answers (``OraclePolicy(answer_from="truth")``):
  it walks top-down to the clue intervals and its ``<think>`` text only cites what the episode has
  shown it.
- :class:`HintedTeacher` lets a chat model behind an OpenAI-compatible endpoint (``OpenAIPolicy``)
  navigate. When it answers wrongly the conversation goes on with a hint, as a user turn (PROTOCOL
  §4): the first hint (after ``hint_after`` wrong answers, default 1) names the medium-level
  segments of the tree that hold the clue intervals, e.g. ``(2,3)``; the second (after
  ``video_qa_hint_after`` wrong answers, default 2) names the low-level clips and tells it to look at
  them with ``video_qa``. After ``max_attempts`` answers (default 3) it gives up.

The cleaned training trajectory
-------------------------------
A student trained on the hinted conversation would learn to wait for hints that never come at
inference. What is written out is therefore the *cleaned path*, rebuilt as an ordinary hint-free
episode: the teacher's wrong answers and the hint turns are removed, and every other valid turn
(tool calls made before *and* after the hints, then the final answer) is replayed, in order, through
a fresh :class:`~longvideo_r1.agent.episode.Episode` with the same rules as the RL rollouts, with the
observations the teacher received. We keep the turns made before the first hint rather than only the
last attempt because the teacher's later reasoning may cite any caption it read earlier; dropping
those observations would teach the student to cite text it never saw. Only the hint and the wrong
answer, which no kept turn may rely on, go. Malformed rounds are dropped too (the student should not
learn them); replaying recounts rounds, so the last-round note lands where the rules put it.

The hint turns ask the teacher not to mention them. A post-hint turn whose reasoning still refers to
a hint or to its earlier wrong answer (``hint``, ``incorrect``, ``was wrong``, ``previous answer``, …)
would read as nonsense without the hint, so the result says ``hint_leak=True`` and the data
generator drops it by default.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

from longvideo_r1.agent import protocol
from longvideo_r1.agent.episode import Episode, EpisodeConfig, Question
from longvideo_r1.agent.policies import OraclePolicy, clue_segments
from longvideo_r1.agent.tools import Tools, run_episode
from longvideo_r1.errors import InputError

HINT_LEAK = re.compile(r"\bhint(?:s|ed)?\b|\bincorrect\b|\bnot correct\b|\bwrong answer\b|"
                       r"\b(?:was|were|is) wrong\b|\b(?:previous|earlier|first) answer\b|\bwas told\b|"
                       r"\btold me\b", re.I)
"""reasoning that gives the hint away: a kept post-hint turn matching it marks ``hint_leak``"""


@dataclass
class HintConfig:
    hint_after: int = 1
    """wrong answers before the first hint (the segments that hold the clues)"""
    video_qa_hint_after: int = 2
    """wrong answers before the second hint (use video_qa on the clue clips)"""
    max_attempts: int = 3
    """answers the teacher may give; after this many wrong ones it gives up"""
    max_hint_segments: int = 4
    """segments named in one hint at most (spread over the clues)"""

    def __post_init__(self):
        if self.max_attempts < 1 or self.hint_after < 1 or self.video_qa_hint_after < 1 or self.max_hint_segments < 1:
            raise InputError(f"teacher hints {self}: every count must be 1 or more")


@dataclass
class TeacherResult:
    """One teacher episode: the cleaned training trajectory and how it was obtained."""

    episode: Episode
    """the cleaned, hint-free episode (its ``messages`` are the training trajectory)"""
    transcript: list[dict]
    """the conversation the teacher actually had, hints and wrong answers included"""
    attempts: int = 0
    """answers the teacher gave"""
    hints: list[str] = field(default_factory=list)
    """hint turns it received, by kind: ``retry`` (no hint possible), ``segment``, ``video_qa``"""
    teacher_rounds: int = 0
    """every assistant turn of the transcript"""
    invalid_rounds: int = 0
    """malformed turns the teacher wrote (dropped from the training trajectory)"""
    hint_leak: bool = False
    """a kept turn's reasoning mentions a hint or an earlier wrong answer"""
    seconds: float = 0.0

    @property
    def correct(self) -> bool | None:
        return self.episode.correct


def format_ids(ids: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, ids)) + ")"


def hint_segments(question: Question, tools: Tools, limit: int = 4) -> tuple[list[tuple], list[tuple]]:
    """The medium segments and low clips of the tree that hold ``question``'s clue intervals."""
    video = tools.captions.video(question.video_id)
    lows = clue_segments(question, video.width, video.num_frames, video.fps)
    if len(lows) > limit:   # spread over all clues rather than the first ones
        step = (len(lows) - 1) / (limit - 1) if limit > 1 else 0
        lows = [lows[round(i * step)] for i in range(limit)]
    mediums = list(dict.fromkeys(ids[:2] for ids in lows))
    return mediums, lows


def _join(ids: list[tuple]) -> str:
    names = [format_ids(i) for i in ids]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def hint_text(kind: str, answer: str, mediums: list[tuple], lows: list[tuple]) -> str:
    """The user turn sent after a wrong answer (our wording)."""
    wrong = f"Your answer {answer} is not correct."
    quiet = ("Do not mention this message in your reasoning: reason only from what the captions and "
             "tools show.")
    if kind == "segment":
        where = "segment" if len(mediums) == 1 else "segments"
        return (f"{wrong} Hint: what the question asks about is in {where} {_join(mediums)} of the caption "
                f"tree. Read the captions there with get_caption, then answer again. {quiet}")
    if kind == "video_qa":
        clips = "clip" if len(lows) == 1 else "clips"
        return (f"{wrong} Hint: look at low-level {clips} {_join(lows)} with video_qa. Read a clip's "
                f"low-level caption with get_caption first if you have not, then ask video_qa((h, m, l), "
                f"\"…\") exactly what the question needs, and answer again. {quiet}")
    return f"{wrong} Keep navigating with the tools and answer again. {quiet}"


def clean_episode(played: Episode, tools: Tools, config: EpisodeConfig) -> Episode:
    """Replay ``played``'s valid turns (malformed ones dropped) through a fresh episode under ``config``.

    Observations are the ones recorded (tools are not called again), with their seconds, so the
    costs are those of the kept turns.
    """
    episode = tools.start(played.question, config)
    for turn in played.turns:
        if turn.action.kind == "invalid":
            continue
        if episode.done:
            break
        action = episode.submit(turn.text, turn.policy_seconds)
        if action.kind != turn.action.kind:
            raise RuntimeError(f"replaying question {played.question.qid}: round {turn.round} was "
                               f"{turn.action.kind} and replays as {action.kind}")
        if action.kind in ("get_caption", "video_qa"):
            episode.observe(turn.observation, turn.tool_seconds)
    return episode


class OracleTeacher:
    """The oracle baseline with truth answers, as an SFT teacher."""

    name = "oracle"

    def __init__(self, **oracle_options):
        self.policy = OraclePolicy(answer_from="truth", **oracle_options)

    def run(self, question: Question, tools: Tools, config: EpisodeConfig) -> TeacherResult:
        t0 = time.perf_counter()
        played = run_episode(self.policy, question, tools, config)
        cleaned = clean_episode(played, tools, config)
        return TeacherResult(cleaned, list(played.messages), attempts=int(played.answer is not None),
                             teacher_rounds=len(played.turns), invalid_rounds=played.costs.invalid_rounds,
                             seconds=time.perf_counter() - t0)


class _View:
    """What the chat model sees: the live episode's messages with the wrong answers and hints inserted."""

    def __init__(self, live: Episode, inserts: list[tuple[int, list[dict]]]):
        self.live = live
        self.inserts = inserts
        self.question = live.question

    @property
    def round(self) -> int:
        return self.live.round

    def prompt(self) -> list[dict]:
        return _merge(self.live.prompt(), self.inserts)


class HintedTeacher:
    """A chat model that navigates, gets hints after wrong answers, and yields the cleaned path.

    ``policy`` is an :class:`~longvideo_r1.agent.llm.OpenAIPolicy` (anything with ``act(view, tools)``
    that reads ``view.prompt()``, ``view.question`` and ``view.round`` works).
    """

    name = "openai"

    def __init__(self, policy, hints: HintConfig | None = None):
        self.policy = policy
        self.hints = hints or HintConfig()

    def _hint_kind(self, wrong_answers: int, have_segments: bool) -> str:
        if not have_segments:
            return "retry"
        if wrong_answers >= self.hints.video_qa_hint_after:
            return "video_qa"
        if wrong_answers >= self.hints.hint_after:
            return "segment"
        return "retry"

    def run(self, question: Question, tools: Tools, config: EpisodeConfig) -> TeacherResult:
        t0 = time.perf_counter()
        # The teacher sees its own malformed turns and the corrective note, whatever the training config.
        live = tools.start(question, replace(config, keep_malformed=True))
        inserts: list[tuple[int, list[dict]]] = []
        mediums, lows = (hint_segments(question, tools, self.hints.max_hint_segments)
                         if question.clue_intervals else ([], []))
        attempts = teacher_rounds = 0
        hints: list[str] = []
        after_hint: set[int] = set()     # rounds of the live episode played after a hint
        view = _View(live, inserts)
        while not live.done:
            started = time.perf_counter()
            text = self.policy.act(view, tools)
            seconds = time.perf_counter() - started
            teacher_rounds += 1
            if hints:
                after_hint.add(live.round)
            action = protocol.parse_action(text, live.width, config.require_think)
            if action.kind == "answer":
                attempts += 1
                wrong = question.answer is not None and action.answer.strip() != question.answer
                if wrong and attempts < self.hints.max_attempts and not live.last_round:
                    kind = self._hint_kind(attempts, bool(lows))
                    hints.append(kind)
                    inserts.append((len(live.messages), [
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": hint_text(kind, action.answer.strip(), mediums, lows)}]))
                    continue
            action = live.submit(text, seconds)
            if action.kind in ("get_caption", "video_qa"):
                observation, tool_seconds = tools.run(question.video_id, action)
                live.observe(observation, tool_seconds)
        cleaned = clean_episode(live, tools, config)
        leak = any(HINT_LEAK.search(t.action.think or "") for t in live.turns
                   if t.round in after_hint and t.action.kind != "invalid")
        return TeacherResult(cleaned, _merge(live.messages, inserts),
                             attempts=attempts, hints=hints, teacher_rounds=teacher_rounds,
                             invalid_rounds=live.costs.invalid_rounds, hint_leak=leak,
                             seconds=time.perf_counter() - t0)


def _merge(messages: list[dict], inserts: list[tuple[int, list[dict]]]) -> list[dict]:
    """``messages`` with each inserted block placed after the message count it was recorded at."""
    out = []
    for i, message in enumerate(messages):
        out.append(message)
        out += [m for pos, block in inserts if pos == i + 1 for m in block]
    return out


TEACHERS = ("oracle", "openai")


def make_teacher(kind: str, endpoint: str | None = None, model: str | None = None, api_key: str | None = None,
                 hints: HintConfig | None = None, **policy_options):
    """``oracle`` or ``openai`` (needs ``endpoint`` and ``model``; ``policy_options`` go to OpenAIPolicy)."""
    if kind == "oracle":
        return OracleTeacher()
    if kind == "openai":
        if not endpoint or not model:
            raise InputError("teacher openai needs --endpoint URL and --model NAME of an OpenAI-compatible "
                             "chat server (e.g. --endpoint http://127.0.0.1:8000/v1 --model Qwen/Qwen3-8B)")
        from longvideo_r1.agent.llm import OpenAIPolicy

        return HintedTeacher(OpenAIPolicy(endpoint, model, api_key=api_key, **policy_options), hints)
    raise InputError(f"teacher {kind!r} is unknown: choose one of {', '.join(TEACHERS)}")


__all__ = ["HintConfig", "TeacherResult", "OracleTeacher", "HintedTeacher", "make_teacher", "clean_episode",
           "hint_segments", "hint_text", "format_ids"]
