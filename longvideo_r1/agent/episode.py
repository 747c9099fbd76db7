"""The rules of one navigation episode (PROTOCOL §2), as a state machine with no I/O of its own.

A driver alternates two calls: ``submit(text)`` hands in the policy's output for the round and
returns the parsed :class:`Action`; if it is a tool call, the driver runs the tool and hands the
observation to ``observe``. This split lets a rollout worker batch the tool calls of many episodes.

Rules enforced here: one tool call per round; ``video_qa`` only on a low segment whose caption was
fetched; a malformed round is dropped (not shown to the model again unless ``keep_malformed``),
counted, and answered with a short corrective note; before the last round the model is told it must
answer; the episode ends at an answer or after ``max_rounds`` rounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from longvideo_r1.agent import protocol
from longvideo_r1.agent.protocol import Action
from longvideo_r1.corpus.questions import Question  # noqa: F401  (the episode's question)
from longvideo_r1.errors import InputError

ANSWER_RULES = ("valid", "reference")
"""Values of ``EpisodeConfig.answer_rule`` (and of ``rl.answer_rule``)."""


@dataclass
class EpisodeConfig:
    max_rounds: int = 30
    """rounds before the episode ends without an answer (30 for evaluation, 15 in RL training)"""
    require_think: bool = True
    """a round without <think>…</think> is malformed"""
    keep_malformed: bool = False
    """keep a malformed turn in the model's context (RL, token-in/token-out) instead of dropping it"""
    system_template: str = protocol.DEFAULT_SYSTEM_PROMPT
    """system prompt template with {width} and {max_rounds}"""
    last_round_note: str = "message"
    """how the model is told the last round has come: "message" (a user message of its own, as the
    reference evaluation does) or "append" (added to the latest user turn: token-level rollouts only
    ever append to the context)"""
    answer_rule: str = "valid"
    """which answer ends the episode: "valid" (only that of a round the rules accept) or "reference"
    (also an <answer>…</answer> in a malformed round without a <tool>…</tool>, as the reference tool
    server reads it; the round still counts as invalid)"""

    def __post_init__(self):
        if self.answer_rule not in ANSWER_RULES:
            raise InputError(f"answer_rule {self.answer_rule!r}: choose one of {', '.join(ANSWER_RULES)}")


@dataclass
class Turn:
    round: int
    text: str                      # what the policy wrote
    action: Action
    observation: str | None        # what was sent back (None after an answer)
    dropped: bool = False          # malformed: removed from the model's context
    policy_seconds: float = 0.0
    tool_seconds: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["action"] = {k: v for k, v in asdict(self.action).items() if v is not None}
        return d


@dataclass
class Costs:
    """Cost accounting of the paper: model compute time per call, summed; no network or decoding."""

    rounds: int = 0
    get_caption_calls: int = 0
    video_qa_calls: int = 0
    invalid_rounds: int = 0
    policy_seconds: float = 0.0
    video_qa_seconds: float = 0.0
    get_caption_seconds: float = 0.0

    @property
    def model_seconds(self) -> float:
        return self.policy_seconds + self.video_qa_seconds


@dataclass
class HighCaption:
    start: float
    end: float
    caption: str


class Episode:
    def __init__(self, question: Question, width: int, duration: float, high_captions: list[HighCaption],
                 config: EpisodeConfig | None = None):
        self.question = question
        self.width = width
        self.duration = duration
        self.config = config or EpisodeConfig()
        if len(high_captions) != width:
            raise ValueError(f"{len(high_captions)} high-level captions for a tree of width {width}")
        self.high_captions = high_captions
        self.messages: list[dict] = [
            {"role": "system", "content": protocol.system_prompt(width, self.config.max_rounds,
                                                                 self.config.system_template)},
            {"role": "user", "content": protocol.first_user_turn(
                question.question, question.options, duration,
                [(c.start, c.end, c.caption) for c in high_captions])},
        ]
        self.turns: list[Turn] = []
        self.costs = Costs()
        self.answer: str | None = None
        self.done = False
        self.visited: list[tuple[int, ...]] = []        # get_caption ids, in call order
        self.video_qa_segments: list[tuple[int, ...]] = []
        self._fetched_low: set[tuple[int, ...]] = set()
        self._pending: tuple[Action, str, float] | None = None
        self._note_added = False

    # ------------------------------------------------------------ what the policy sees

    @property
    def round(self) -> int:
        """The number of the round about to be played (1-based)."""
        return len(self.turns) + 1

    @property
    def last_round(self) -> bool:
        return self.round >= self.config.max_rounds

    def prompt(self) -> list[dict]:
        """The chat context for the next round (the last-round note is added once, when due)."""
        if self.done:
            raise RuntimeError("the episode is over")
        if self.last_round and not self._note_added:
            if self.config.last_round_note == "append":
                last = self.messages[-1]
                self.messages[-1] = {**last, "content": f"{last['content']}\n\n{protocol.LAST_ROUND_NOTE}"}
            else:
                self.messages.append({"role": "user", "content": protocol.LAST_ROUND_NOTE})
            self._note_added = True
        return self.messages

    # ------------------------------------------------------------ playing a round

    def submit(self, text: str, policy_seconds: float = 0.0) -> Action:
        """Hand in the policy's output for this round; returns what to do with it.

        For ``get_caption``/``video_qa`` the caller runs the tool and calls :meth:`observe`.
        ``answer`` and ``invalid`` rounds are settled here.
        """
        if self.done:
            raise RuntimeError("the episode is over")
        if self._pending is not None:
            raise RuntimeError("observe() the pending tool call before submitting the next round")
        self.prompt()  # make sure the last-round note is in place even if the caller skipped prompt()
        self.costs.rounds += 1
        self.costs.policy_seconds += policy_seconds
        action = protocol.parse_action(text, self.width, self.config.require_think)
        if action.kind == "video_qa" and action.ids not in self._fetched_low:
            ids = ",".join(map(str, action.ids))
            action = Action("invalid", message=f"video_qa(({ids}), …) needs the low-level caption of that clip "
                                               f"first: call get_caption(({ids})) before asking about it",
                            think=action.think)
        if action.kind == "invalid" and self.config.answer_rule == "reference":
            answer = protocol.reference_answer(text)
            if answer is not None:
                self._malformed_answer(text, action, answer, policy_seconds)
                return self.turns[-1].action
        if action.kind == "invalid":
            self._malformed(text, action, policy_seconds)
        elif action.kind == "answer":
            self.answer = action.answer
            self.turns.append(Turn(self.round, text, action, None, policy_seconds=policy_seconds))
            self.messages.append({"role": "assistant", "content": text})
            self.done = True
        else:
            self._pending = (action, text, policy_seconds)
        return action

    def observe(self, observation: str, tool_seconds: float = 0.0) -> None:
        """The result of the pending tool call (an observation string of PROTOCOL §2)."""
        if self._pending is None:
            raise RuntimeError("no tool call is pending")
        action, text, policy_seconds = self._pending
        self._pending = None
        if action.kind == "get_caption":
            self.costs.get_caption_calls += 1
            self.costs.get_caption_seconds += tool_seconds
            self.visited.append(action.ids)
            if len(action.ids) == 3:
                self._fetched_low.add(action.ids)
        else:
            self.costs.video_qa_calls += 1
            self.costs.video_qa_seconds += tool_seconds
            self.video_qa_segments.append(action.ids)
        self.turns.append(Turn(self.round, text, action, observation, policy_seconds=policy_seconds,
                               tool_seconds=tool_seconds))
        self.messages.append({"role": "assistant", "content": text})
        self.messages.append({"role": "user", "content": observation})
        self._end_if_out_of_rounds()

    def _malformed(self, text: str, action: Action, policy_seconds: float) -> None:
        self.costs.invalid_rounds += 1
        note = f"Your last reply was not valid: {action.message}."
        self.turns.append(Turn(self.round, text, action, note, dropped=not self.config.keep_malformed,
                               policy_seconds=policy_seconds))
        if self.config.keep_malformed:
            self.messages.append({"role": "assistant", "content": text})
        self.messages.append({"role": "user", "content": note})
        self._end_if_out_of_rounds()

    def _malformed_answer(self, text: str, action: Action, answer: str, policy_seconds: float) -> None:
        """``answer_rule: reference``: a malformed round holding an answer ends the episode with it.
        The round counts as invalid and keeps its kind (``invalid``, with the answer read)."""
        self.costs.invalid_rounds += 1
        action = Action("invalid", answer=answer, message=action.message, think=action.think)
        self.turns.append(Turn(self.round, text, action, None, policy_seconds=policy_seconds))
        self.messages.append({"role": "assistant", "content": text})
        self.answer = answer
        self.done = True

    def _end_if_out_of_rounds(self) -> None:
        if len(self.turns) >= self.config.max_rounds:
            self.done = True

    # ------------------------------------------------------------ results

    @property
    def correct(self) -> bool | None:
        if self.question.answer is None:
            return None
        return self.answer is not None and self.answer.strip() == self.question.answer

    def solution_str(self, accepted_only: bool = False) -> str:
        """The assistant turns joined, as a verl reward function receives the response.

        ``accepted_only``: only the rounds the rules accepted (the tool calls that ran and the answer
        that ended the episode), so a tag in a malformed round, e.g. an ``<answer>`` the rules
        rejected, is not there for the reward to read.
        """
        return "\n".join(t.text for t in self.turns if not accepted_only or t.action.kind != "invalid")

    def to_json(self) -> dict:
        return {
            "question": asdict(self.question),
            "width": self.width,
            "duration": self.duration,
            "answer": self.answer,
            "correct": self.correct,
            "rounds": len(self.turns),
            "visited": [list(v) for v in self.visited],
            "video_qa_segments": [list(v) for v in self.video_qa_segments],
            "costs": {**asdict(self.costs), "model_seconds": self.costs.model_seconds},
            "turns": [t.to_json() for t in self.turns],
            "messages": self.messages,
        }

