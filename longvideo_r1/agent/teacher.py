"""SFT teachers: play a navigation episode per training question and hand back a clean trajectory.

Two teachers share one result type (:class:`TeacherResult`):

- :class:`OracleTeacher` is the oracle baseline with truth answers (``OraclePolicy(answer_from="truth")``):
  it walks top-down to the clue intervals; its ``<think>`` text is templated and only cites what the
  episode has shown it. It needs no model and serves the demo.
- :class:`HintedTeacher` lets a chat model behind an OpenAI-compatible endpoint (``OpenAIPolicy``)
  navigate, and hints it towards the clue when it fails (PROTOCOL §4).

The hint schedule (the reference's SFT data generator)
------------------------------------------------------
After a wrong answer the teacher gets the next hint of :attr:`HintConfig.schedule`, by default: the
high-level segment(s) of the caption tree that hold the question's clue intervals, then the medium
ones, then the low-level clips, then "look at those clips with video_qa"; a wrong answer after the
last hint is final (it gives up). Segment ids are those of the clue intervals at each level (at
most ``max_hint_segments``, spread over the clues). A question without clue intervals gets no
location: each step is a plain "keep navigating" retry, as many as the schedule has steps. A run
without a video_qa backend skips the video_qa step (the tool could only say it is unavailable).

The wrong answer is taken out of the dialogue: it is not added to the conversation, the model never
sees it again, and the hint does not repeat it. The hint text is appended to the latest user turn
(the observation the model answered after, or the question itself), so the chat still alternates
system, user, assistant, user, … as chat templates need, and the model goes on navigating from where
it stood. Earlier hints stay where they were given. A wrong answer does not use up a round of the
episode; the hint is only given while a round to navigate in is left before the last one.

A missing answer gets the next hint too: when the episode runs out of rounds without an answer
(the model kept calling tools or kept writing malformed turns), its malformed turns are dropped,
the valid ones replayed, and if that leaves rounds to navigate in, the hint is given there. Without
rounds left the teacher stops: the episode has no answer and is not kept.

The cleaned training trajectory
-------------------------------
A student trained on the hinted conversation would learn to wait for hints that never come at
inference. What is written out is therefore the *cleaned path*, rebuilt as an ordinary hint-free
episode: the hints and the wrong answers are gone, and every other valid turn (tool calls made
before *and* after the hints, then the final answer) is replayed, in order, through a fresh
:class:`~longvideo_r1.agent.episode.Episode` with the same rules as the RL rollouts, with the
observations the teacher received. We keep the turns made before the first hint rather than only the
last attempt because the teacher's later reasoning may cite any caption it read earlier; dropping
those observations would teach the student to cite text it never saw. Malformed rounds are dropped
too (the student should not learn them); replaying recounts rounds, so the last-round note lands
where the rules put it.

The hint asks the teacher not to mention it. A kept turn played after a hint whose reasoning still
refers to a hint or to an earlier wrong answer (``hint``, ``incorrect``, ``was wrong``, ``previous
answer``, …) would read as nonsense without the hint, so the result says ``hint_leak=True`` and the
data generator drops it by default.

Accounting: every model call of the episode is counted, with the prompt and completion tokens the
server reported and the model's seconds (:class:`~longvideo_r1.agent.llm.CallUsage`), wrong answers
included; a question that fails half way carries what it used so far on its error (``exc.usage``).
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
                       r"\b(?:was|were|is) wrong\b|\b(?:previous|earlier|first) (?:answer|attempt)\b|\bwas told\b|"
                       r"\btold me\b", re.I)
"""reasoning that gives the hint away: a kept post-hint turn matching it marks ``hint_leak``"""

HINT_KINDS = ("high", "medium", "low", "video_qa", "retry")
"""what a hint can say: where the clue is at one level of the tree, to use video_qa on the clue
clips, or (``retry``) only to keep navigating"""
DEFAULT_HINT_SCHEDULE = ("high", "medium", "low", "video_qa")
"""the reference's order: one more hint after each wrong or missing answer, then give up"""


@dataclass(init=False)
class HintConfig:
    """The hints a :class:`HintedTeacher` gives, in order: ``schedule[i]`` after the (i+1)-th wrong or
    missing answer; after the last one, the next wrong answer is final.

    ``HintConfig()`` is the reference schedule; ``HintConfig(["medium", "video_qa"])`` or
    ``HintConfig(schedule="medium,video_qa")`` another one; ``HintConfig([])`` gives no hint at all
    (the first answer is final).
    """

    schedule: tuple[str, ...]
    max_hint_segments: int
    """segments named in one hint at most (spread over the clues)"""

    def __init__(self, schedule=None, max_hint_segments: int = 4):
        if schedule is None:
            schedule = DEFAULT_HINT_SCHEDULE
        if isinstance(schedule, str):
            schedule = [k.strip() for k in schedule.split(",") if k.strip()]
        schedule = tuple(schedule)
        unknown = [k for k in schedule if k not in HINT_KINDS]
        if unknown:
            raise InputError(f"teacher hint schedule {','.join(map(str, schedule))}: {', '.join(map(repr, unknown))} "
                             f"is not a hint kind; use {', '.join(HINT_KINDS)}")
        if isinstance(max_hint_segments, bool) or not isinstance(max_hint_segments, int) or max_hint_segments < 1:
            raise InputError(f"teacher hints: max_hint_segments must be 1 or more, got {max_hint_segments!r}")
        self.schedule = schedule
        self.max_hint_segments = max_hint_segments

    @property
    def max_answers(self) -> int:
        """Answers the teacher may give: one more than the hints."""
        return len(self.schedule) + 1


@dataclass
class TeacherResult:
    """One teacher episode: the cleaned training trajectory and how it was obtained."""

    episode: Episode
    """the cleaned, hint-free episode (its ``messages`` are the training trajectory)"""
    transcript: list[dict]
    """the dialogue the model saw last, hints included (wrong answers are never in it)"""
    attempts: int = 0
    """answers the teacher gave"""
    hints: list[str] = field(default_factory=list)
    """the hints it received, by kind (``high``, ``medium``, ``low``, ``video_qa``, ``retry``)"""
    teacher_rounds: int = 0
    """every turn the model wrote (wrong answers and malformed turns included)"""
    invalid_rounds: int = 0
    """malformed turns the teacher wrote (dropped from the training trajectory)"""
    hint_leak: bool = False
    """a kept turn's reasoning mentions a hint or an earlier wrong answer"""
    seconds: float = 0.0
    """wall-clock seconds of the whole teacher episode (tools included)"""
    wrong_answers: list[str] = field(default_factory=list)
    """the turns with a wrong answer that were taken out of the dialogue, in order"""
    calls: int = 0
    """model calls"""
    prompt_tokens: int = 0
    """prompt tokens of those calls, as the server reported them (0 where it did not)"""
    completion_tokens: int = 0
    """completion tokens of those calls, as the server reported them"""
    call_seconds: float = 0.0
    """the model's seconds over those calls (successful HTTP attempts)"""

    @property
    def correct(self) -> bool | None:
        return self.episode.correct

    def usage(self) -> dict:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "call_seconds": self.call_seconds}


def format_ids(ids: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, ids)) + ")"


def _spread(items: list, limit: int) -> list:
    """At most ``limit`` of ``items``, spread evenly from the first to the last."""
    if len(items) <= limit:
        return list(items)
    if limit == 1:
        return [items[0]]
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def hint_segments(question: Question, tools: Tools, limit: int = 4) -> dict[str, list[tuple]]:
    """The segments of each level of the tree that hold ``question``'s clue intervals, in time order:
    ``{"high": [(h,), …], "medium": [(h, m), …], "low": [(h, m, l), …]}`` (at most ``limit`` each)."""
    if not question.clue_intervals:
        return {"high": [], "medium": [], "low": []}
    video = tools.captions.video(question.video_id)
    lows = clue_segments(question, video.width, video.num_frames, video.fps)
    return {"high": _spread(list(dict.fromkeys(ids[:1] for ids in lows)), limit),
            "medium": _spread(list(dict.fromkeys(ids[:2] for ids in lows)), limit),
            "low": _spread(lows, limit)}


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


HINT_QUIET = ("Do not mention this hint in your reasoning: reason only from what the captions and the tools "
              "show.")


def hint_text(kind: str, places: dict[str, list[tuple]], cause: str = "wrong") -> str:
    """The guidance appended to the latest user turn (our wording). ``cause``: ``wrong`` (an answer
    that was not right, which is not repeated) or ``missing`` (the rounds ran out without one)."""
    opening = ("The rounds so far did not reach an answer." if cause == "missing" else
               "An earlier attempt at this question did not find the right answer.")
    many = len(places.get({"high": "high", "video_qa": "low"}.get(kind, kind), [])) > 1
    if kind == "high":
        numbers = [str(ids[0]) for ids in places["high"]]
        where = f"high-level segment{'s' if many else ''} {_join(numbers)}"
        return (f"{opening} Hint: what the question asks about happens within {where} (High-level "
                f"Caption{'s' if many else ''} {_join(numbers)} above). Read the medium-level captions inside {'them' if many else 'it'} with "
                f"get_caption((h, m)), go down to the low-level clips where needed, then answer. {HINT_QUIET}")
    if kind == "medium":
        where = f"medium-level segment{'s' if many else ''} {_join([format_ids(i) for i in places['medium']])}"
        return (f"{opening} Hint: what the question asks about happens within {where}. Read "
                f"{'them' if many else 'it'} with get_caption (and the low-level clips inside where needed), then "
                f"answer. {HINT_QUIET}")
    if kind == "low":
        where = f"low-level clip{'s' if many else ''} {_join([format_ids(i) for i in places['low']])}"
        return (f"{opening} Hint: what the question asks about happens within {where}. Read "
                f"{'them' if many else 'it'} with get_caption, then answer. {HINT_QUIET}")
    if kind == "video_qa":
        where = f"low-level clip{'s' if many else ''} {_join([format_ids(i) for i in places['low']])}"
        return (f"{opening} Hint: the captions may miss or misstate the detail that decides it. Look at {where} "
                f"with video_qa: read a clip's low-level caption with get_caption first if you have not, then ask "
                f"video_qa((h, m, l), \"…\") exactly what the question needs, and answer. {HINT_QUIET}")
    return (f"{opening} Hint: keep navigating with the tools, read the captions that matter to the question, "
            f"then answer. {HINT_QUIET}")


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
    """The oracle baseline with truth answers, as an SFT teacher (no model, no hints)."""

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


def _append_to_user_turn(episode: Episode, index: int, text: str) -> None:
    message = episode.messages[index]
    if message["role"] != "user":
        raise RuntimeError(f"a hint belongs to a user turn, not to message {index} ({message['role']})")
    episode.messages[index] = {**message, "content": f"{message['content']}\n\n{text}"}


class HintedTeacher:
    """A chat model that navigates, is hinted after wrong or missing answers, and yields the cleaned path.

    ``policy`` is an :class:`~longvideo_r1.agent.llm.OpenAIPolicy` (anything with ``act(episode, tools)``
    that reads ``episode.prompt()``, ``episode.question`` and ``episode.round`` works; a ``last_call``
    attribute, if it has one, is read after each call for the accounting, and ``check()`` is used by
    the data generator to see the endpoint answers before any question is played).
    """

    name = "openai"

    def __init__(self, policy, hints: HintConfig | None = None):
        self.policy = policy
        self.hints = hints or HintConfig()

    def check(self) -> None:
        check = getattr(self.policy, "check", None)
        if check is not None:
            check()

    def schedule(self, question: Question, tools: Tools) -> list[str]:
        """The hints this question can get, in order: no location without clue intervals, and no
        video_qa hint when the tools have no video_qa backend."""
        if not question.clue_intervals:
            return ["retry"] * len(self.hints.schedule)
        return [k for k in self.hints.schedule if k != "video_qa" or tools.video_qa is not None]

    @staticmethod
    def _room(live: Episode, tools: Tools, config: EpisodeConfig,
              notes: list[list]) -> Episode | None:
        """An episode with a round to navigate in before the last one, holding ``live``'s valid turns
        and its hints: ``live`` itself when it has room, else ``live`` replayed without its malformed
        turns (``notes`` are moved onto the replay), else None."""
        if not live.done and not live.last_round:
            return live
        if not any(t.action.kind == "invalid" for t in live.turns):
            return None
        fresh = tools.start(live.question, config)
        ends = [len(fresh.messages) - 1]      # ends[j]: the user turn that closes the first j valid turns
        kept_before = [0]                     # kept_before[k]: valid turns among live.turns[:k]
        for turn in live.turns:
            kept_before.append(kept_before[-1] + (turn.action.kind != "invalid"))
            if turn.action.kind == "invalid" or fresh.done:
                continue
            fresh.submit(turn.text, turn.policy_seconds)
            fresh.observe(turn.observation, turn.tool_seconds)   # a valid turn before the end is a tool call
            ends.append(len(fresh.messages) - 1)
        if fresh.done or fresh.last_round:
            return None
        for note in notes:
            note[0] = kept_before[note[0]]
            _append_to_user_turn(fresh, ends[note[0]], note[1])
        return fresh

    def run(self, question: Question, tools: Tools, config: EpisodeConfig) -> TeacherResult:
        from longvideo_r1.agent.llm import CallUsage

        t0 = time.perf_counter()
        # The model sees its own malformed turns and the corrective note, whatever the training config.
        live_config = replace(config, keep_malformed=True)
        live = tools.start(question, live_config)
        schedule = self.schedule(question, tools)
        places = hint_segments(question, tools, self.hints.max_hint_segments)
        given: list[str] = []
        notes: list[list] = []        # [valid turns of the live episode when given, hint text]
        wrong: list[str] = []
        usage = CallUsage()
        attempts = teacher_rounds = invalid = 0
        leak = False

        def hint(episode: Episode, cause: str) -> None:
            text = hint_text(schedule[len(given)], places, cause)
            given.append(schedule[len(given)])
            notes.append([len(episode.turns), text])
            _append_to_user_turn(episode, len(episode.messages) - 1, text)

        try:
            while True:
                if live.done:
                    if live.answer is not None or len(given) >= len(schedule):
                        break
                    roomy = self._room(live, tools, live_config, notes)
                    if roomy is None:
                        break
                    live = roomy
                    hint(live, "missing")
                    continue
                started = time.perf_counter()
                text = self.policy.act(live, tools)
                seconds = time.perf_counter() - started
                call = getattr(self.policy, "last_call", None)
                if call is not None:
                    usage.add(call)
                teacher_rounds += 1
                action = protocol.parse_action(text, live.width, config.require_think)
                if action.kind == "answer":
                    attempts += 1
                    if question.answer is not None and action.answer.strip() != question.answer \
                            and len(given) < len(schedule):
                        roomy = self._room(live, tools, live_config, notes)
                        if roomy is not None:      # out of the dialogue, and the next hint instead
                            wrong.append(text)
                            live = roomy
                            hint(live, "wrong")
                            continue
                action = live.submit(text, seconds)
                if action.kind == "invalid":
                    invalid += 1
                elif given and HINT_LEAK.search(action.think or ""):
                    leak = True
                if action.kind in ("get_caption", "video_qa"):
                    observation, tool_seconds = tools.run(question.video_id, action)
                    live.observe(observation, tool_seconds)
        except InputError as exc:
            exc.usage = usage.to_dict()      # what the question used before it failed
            raise
        cleaned = clean_episode(live, tools, config)
        return TeacherResult(cleaned, list(live.messages), attempts=attempts, hints=given,
                             teacher_rounds=teacher_rounds, invalid_rounds=invalid, hint_leak=leak,
                             seconds=time.perf_counter() - t0, wrong_answers=wrong, calls=usage.calls,
                             prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                             call_seconds=usage.seconds)


TEACHERS = ("oracle", "openai")


def make_teacher(kind: str, endpoint: str | None = None, model: str | None = None, api_key: str | None = None,
                 hints: HintConfig | None = None, **policy_options):
    """The SFT teacher ``kind``.

    - ``oracle``: the oracle baseline (:class:`OracleTeacher`), for the demo and tests. Its thinking
      text is templated (it only cites what the episode showed it) and its answers are the truth, so
      every trajectory is correct; it needs no model and gets no hints.
    - ``openai``: a chat model behind an OpenAI-compatible endpoint (:class:`HintedTeacher`); needs
      ``endpoint`` and ``model``; ``hints`` is its hint schedule; ``policy_options`` go to
      :class:`~longvideo_r1.agent.llm.OpenAIPolicy` (``temperature``, ``max_tokens``, ``timeout``, …).
    """
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
           "hint_segments", "hint_text", "format_ids", "HINT_KINDS", "DEFAULT_HINT_SCHEDULE"]
