"""The offline captioner for real footage: it reports only what general signals find, with times.

No model that can say what happens in a video, who is in it or what objects it shows ships in a
package (STACK.md), so on a CPU with nothing downloaded a caption can only hold what simpler signals
measure reliably:

- on-screen text, read by RapidOCR on some of the sampled frames, kept only when the reader is
  confident, and merged across frames into "shown from a to b" spans;
- speech, transcribed once per video by Whisper tiny.en (``corpus.speech``) and handed to each
  request as the segments overlapping its part (``request.speech``; this captioner sets
  ``wants_speech``);
- subtitle lines (``request.subtitles``, from the SRT file beside the video);
- cuts: a large colour-histogram jump between consecutive sampled frames;
- brightness (dark, dim, well lit, bright) from the mean luma of each frame, and motion (little,
  some, much) from the mean absolute difference of consecutive frames within a shot.

Low captions give every finding with its time; medium and high captions summarise more coarsely, all
within the level's word budget (``request.word_budget``). It never describes colours or shapes, and
when it finds nothing notable it says so. It sees only the request: frames, their times, subtitles
and speech, never a file name. Real descriptions of the action need a VLM (the ``openai`` captioner).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from longvideo_r1.corpus.captioners import CaptionRequest, subtitle_spans
from longvideo_r1.errors import InputError

THUMB = (64, 36)            # (width, height) of the grey thumbnail behind the difference measures
HIST_BITS = 3               # colour histogram of 8 x 8 x 8 bins
# A cut: the colour histograms of two consecutive sampled frames share less than 70 % of their mass,
# or a smaller histogram jump comes with most of the picture changing. Calibrated on the packaged
# clips (continuous shots stay below 0.15 between frames 2 s apart; their cuts reach 0.26-0.75).
CUT_HISTOGRAM = 0.3
CUT_HISTOGRAM_WITH_CHANGE = 0.15
CUT_CHANGE = 35.0
# Mean absolute grey difference (0-255) between consecutive frames of one shot.
STILL_BELOW, MUCH_FROM = 3.0, 12.0
# Mean luma (0-255) of a frame: below 40 dark, below 90 dim, from 170 bright, otherwise well lit.
LIGHT_LEVELS = ((40.0, "dark"), (90.0, "dim"), (170.0, "well lit"), (256.0, "bright"))
# A frame whose thumbnail differs from the last one read by less than this everywhere shows the same
# text: its OCR result is reused.
SAME_FRAME_MAX_DIFF = 6.0

_QUOTE_WORDS = {"low": 45, "medium": 30, "high": 25}     # longest quote of speech or a subtitle
_LIST_ITEMS = {"low": 12, "medium": 8, "high": 6}       # most texts or cuts named one by one


# ---------------------------------------------------------------- what the signals found

@dataclass
class TextSeen:
    """One piece of on-screen text and the spans of time it was read in."""

    text: str
    score: float
    spans: list[list[float]] = field(default_factory=list)   # [[first seen, last seen], ...]


@dataclass
class Findings:
    """Everything the signals found in one request, with times in seconds."""

    times: list[float]                       # the distinct frames analysed
    light: list[str]                         # brightness word of each of those frames
    cuts: list[tuple[float, float]]          # (last frame before, first frame after)
    motion: str | None                       # little / some / much; None with a single frame
    texts: list[TextSeen]
    speech: list[tuple[float, float, str]]
    subtitles: list[tuple[str, float, float]]
    span: tuple[float, float]

    @property
    def notable(self) -> bool:
        return bool(self.cuts or self.texts or self.speech or self.subtitles)


def _light_word(luma: float) -> str:
    return next(word for limit, word in LIGHT_LEVELS if luma < limit)


def _frame_signature(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A normalised colour histogram and a small grey thumbnail (float32) of one RGB frame."""
    step = max(1, int(np.sqrt(frame.shape[0] * frame.shape[1] / 20_000)))
    q = frame[::step, ::step] >> (8 - HIST_BITS)
    bins = (q[..., 0].astype(np.int32) << (2 * HIST_BITS)) | (q[..., 1].astype(np.int32) << HIST_BITS) | q[..., 2]
    hist = np.bincount(bins.ravel(), minlength=1 << (3 * HIST_BITS)).astype(np.float32)
    hist /= max(1.0, hist.sum())
    thumb = np.asarray(Image.fromarray(np.ascontiguousarray(frame)).convert("L").resize(THUMB, Image.BILINEAR),
                       np.float32)
    return hist, thumb


def _is_cut(hist_a, thumb_a, hist_b, thumb_b) -> tuple[bool, float]:
    """Whether two consecutive frames lie across a cut, and their mean grey difference."""
    jump = 0.5 * float(np.abs(hist_a - hist_b).sum())
    change = float(np.abs(thumb_a - thumb_b).mean())
    return jump >= CUT_HISTOGRAM or (jump >= CUT_HISTOGRAM_WITH_CHANGE and change >= CUT_CHANGE), change


def _text_key(text: str) -> str:
    return "".join(ch for ch in text.casefold() if ch.isalnum())


# ---------------------------------------------------------------- wording helpers

def _t(seconds: float, level: str = "low") -> str:
    if level == "low" or seconds < 10:
        return f"{seconds:.1f}".rstrip("0").rstrip(".") + " s"
    return f"{round(seconds)} s"


def _span(a: float, b: float, level: str = "low") -> str:
    if _t(a, level) == _t(b, level):
        return f"at {_t(a, level)}"
    return f"from {_t(a, level)} to {_t(b, level)}"


def _listing(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _quote(text: str, words: int) -> str:
    parts = text.replace('"', "'").split()
    return '"' + (" ".join(parts) if len(parts) <= words else " ".join(parts[:words]) + " …") + '"'


def _said(lead: str, quoted: str) -> str:
    """``lead`` followed by a quote, ending the sentence with a full stop unless the quote already does."""
    return f"{lead} {quoted}" + ("" if quoted[-2:-1] in ".?!…" else ".")


def _words(text: str) -> int:
    return len(text.split())


def _budget(text: str, words: int) -> str:
    parts = text.split()
    return text if len(parts) <= words else " ".join(parts[:words])


def _light_runs(times: list[float], light: list[str]) -> list[list]:
    """Consecutive frames of one brightness word; a single-frame blip joins the run before it."""
    runs: list[list] = []
    for t, word in zip(times, light):
        if runs and runs[-1][0] == word:
            runs[-1][2] = t
            runs[-1][3] += 1
        else:
            runs.append([word, t, t, 1])
    merged: list[list] = []
    for run in runs:
        if merged and (run[3] == 1 and run is not runs[-1] or merged[-1][0] == run[0]):
            merged[-1][2] = run[2]
            merged[-1][3] += run[3]
        else:
            merged.append(run)
    return merged


# ---------------------------------------------------------------- the captioner

class OfflineCaptioner:
    """Captions of real footage from OCR, speech, subtitles, cuts, brightness and motion.

    ``ocr``: read on-screen text. ``speech``: ask for the video's transcribed speech (sets
    ``wants_speech``). ``ocr_min_score``: drop reads the OCR is less sure of. ``ocr_frames``: at most
    this many frames per request are read, evenly spread (default 4 / 8 / 16 for high / medium /
    low), and no two less than ``ocr_interval`` seconds apart. ``ocr_max_side``: frames are shrunk
    to this longest side before reading. ``frames_per_level``: at most this many distinct frames are
    measured per request.
    """

    name = "offline"

    def __init__(self, ocr: bool = True, speech: bool = True, ocr_min_score: float = 0.8,
                 ocr_frames: dict[str, int] | None = None, ocr_interval: float = 1.0,
                 ocr_max_side: int = 768, frames_per_level: dict[str, int] | None = None):
        if not 0.0 <= ocr_min_score <= 1.0:
            raise InputError(f"offline captioner: ocr_min_score must be in 0..1, got {ocr_min_score}")
        if ocr_max_side < 32:
            raise InputError(f"offline captioner: ocr_max_side must be at least 32 px, got {ocr_max_side}")
        self.ocr = ocr
        self.wants_speech = speech
        self.ocr_min_score = ocr_min_score
        self.ocr_frames = {"high": 4, "medium": 8, "low": 16, **(ocr_frames or {})}
        self.ocr_interval = ocr_interval
        self.ocr_max_side = ocr_max_side
        self.frames_per_level = {"high": 128, "medium": 64, "low": 32, **(frames_per_level or {})}
        self._engine = None
        self.ocr_calls = 0   # frames the OCR model read (the others reused a neighbour's result)

    # ------------------------------------------------------------ public

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        for request in requests:
            yield self.caption(request)

    def caption(self, request: CaptionRequest) -> str:
        findings = self.analyse(request)
        return write_caption(findings, request.level, request.word_budget)

    # ------------------------------------------------------------ measuring

    def analyse(self, request: CaptionRequest) -> Findings:
        """What the signals find in one request."""
        times = [float(t) for t in request.frame_time]
        if len(times) != len(request.frames) or not times:
            raise InputError(f"video {request.video_id} segment {request.ids}: {len(request.frames)} frames but "
                             f"{len(times)} frame times; the caption request is inconsistent")
        # Sampled frames repeat when a segment is short; measure each distinct time once.
        distinct = [i for i, t in enumerate(times) if i == 0 or t != times[i - 1]]
        limit = self.frames_per_level.get(request.level, 32)
        if len(distinct) > limit:
            distinct = [distinct[int(j)] for j in np.linspace(0, len(distinct) - 1, limit)]
        frames = [np.asarray(request.frames[i]) for i in distinct]
        seen = [times[i] for i in distinct]
        signatures = [_frame_signature(f) for f in frames]
        light = [_light_word(float(thumb.mean())) for _, thumb in signatures]
        cuts, changes = [], []
        for k in range(1, len(frames)):
            cut, change = _is_cut(*signatures[k - 1], *signatures[k])
            if cut:
                cuts.append((seen[k - 1], seen[k]))
            else:
                changes.append(change)
        motion = None
        if len(frames) > 1:
            # with every pair across a cut there is no within-shot measure; the cuts say enough
            level = float(np.median(changes)) if changes else MUCH_FROM
            motion = "little" if level < STILL_BELOW else "some" if level < MUCH_FROM else "much"
        texts = self._read_texts(request.level, frames, seen, [thumb for _, thumb in signatures]) if self.ocr else []
        t0, t1 = times[0], times[-1]
        return Findings(seen, light, cuts, motion, texts, sorted(request.speech or []), subtitle_spans(request),
                        (t0, t1))

    def _read_texts(self, level: str, frames: list[np.ndarray], times: list[float],
                    thumbs: list[np.ndarray]) -> list[TextSeen]:
        count = max(0, self.ocr_frames.get(level, 8))
        if count == 0:
            return []
        # Text stays on screen for a second or more: frames closer than ocr_interval add little.
        spaced = []
        for k, t in enumerate(times):
            if not spaced or t - times[spaced[-1]] >= self.ocr_interval:
                spaced.append(k)
        if len(spaced) > count:
            spaced = [spaced[int(round(j))] for j in np.linspace(0, len(spaced) - 1, count)]
        picked = sorted(set(spaced))
        gap = 2.5 * (times[picked[-1]] - times[picked[0]]) / max(1, len(picked) - 1) if len(picked) > 1 else 1.0
        found: list[TextSeen] = []
        last_thumb, last_lines = None, []
        for k in picked:
            if last_thumb is not None and float(np.abs(thumbs[k] - last_thumb).max()) < SAME_FRAME_MAX_DIFF:
                lines = last_lines
            else:
                lines = self._recognise(frames[k])
                last_thumb, last_lines = thumbs[k], lines
            for text, score in lines:
                self._add_sighting(found, text, score, times[k], gap)
        return sorted(found, key=lambda seen: seen.spans[0][0])

    @staticmethod
    def _add_sighting(found: list[TextSeen], text: str, score: float, t: float, gap: float) -> None:
        key = _text_key(text)
        for seen in found:
            other = _text_key(seen.text)
            if key == other or (min(len(key), len(other)) >= 4 and
                                difflib.SequenceMatcher(None, key, other).ratio() >= 0.8):
                if score > seen.score:
                    seen.text, seen.score = text, score
                if t - seen.spans[-1][1] <= gap:
                    seen.spans[-1][1] = t
                else:
                    seen.spans.append([t, t])
                return
        found.append(TextSeen(text, score, [[t, t]]))

    def _recognise(self, frame: np.ndarray) -> list[tuple[str, float]]:
        """Confident text lines of one frame (at least two letters or digits each)."""
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR
            # "max": never enlarge a frame for detection (the default scales the short side up to
            # 736 px, ten times the work on a 512 px frame for no gain on text of a readable size)
            self._engine = RapidOCR(det_limit_type="max")
        if max(frame.shape[:2]) > self.ocr_max_side:
            from longvideo_r1.corpus.video import resize_max_side
            frame = resize_max_side(frame, self.ocr_max_side)
        self.ocr_calls += 1
        result, _ = self._engine(np.ascontiguousarray(frame), use_cls=False)
        lines = []
        for _, text, score in result or []:
            text = " ".join(str(text).split())
            if float(score) >= self.ocr_min_score and sum(ch.isalnum() for ch in text) >= 2:
                lines.append((text, float(score)))
        return lines


# ---------------------------------------------------------------- writing

def finding_sentences(findings: Findings, level: str = "low") -> dict[str, list[str]]:
    """The sentences of a caption grouped by topic, each group in caption order.

    Keys: ``look`` (brightness and motion over the span), ``cuts``, ``text`` (on-screen text),
    ``speech`` and ``subtitles`` (one sentence per quoted line at the low level). The caption joins
    them in that order; the offline video_qa tool picks the groups a question asks about.
    """
    t0, t1 = findings.span
    topics: dict[str, list[str]] = {"look": [], "cuts": [], "text": [], "speech": [], "subtitles": []}
    most = _LIST_ITEMS[level]
    quote = _QUOTE_WORDS[level]

    runs = _light_runs(findings.times, findings.light)
    if len(runs) == 1:
        light = f"{runs[0][0]} throughout"
    elif len(runs) <= 4:
        light = runs[0][0] + "".join(f", then {r[0]} from {_t(r[1], level)}" for r in runs[1:])
    else:
        share: dict[str, int] = {}
        for word in findings.light:
            share[word] = share.get(word, 0) + 1
        light = f"mostly {max(share, key=share.get)}, its brightness changing {len(runs) - 1} times"
    motion = {"little": "with little motion", "some": "with some motion", "much": "with much motion",
              None: "in a single sampled frame"}[findings.motion]
    when = _span(t0, t1, level)
    topics["look"].append(f"{when[0].upper()}{when[1:]} the picture is {light}, {motion}.")

    cuts = findings.cuts
    if not cuts:
        if findings.notable:   # otherwise the absence sentence says it
            topics["cuts"].append("No cut is detected.")
    elif level == "high" or len(cuts) > most:
        around = _listing([f"{_t((a + b) / 2, level)}" for a, b in cuts[:most]])
        more = f", and {len(cuts) - most} more" if len(cuts) > most else ""
        topics["cuts"].append(f"{len(cuts)} cut{'s are' if len(cuts) > 1 else ' is'} detected, around "
                              f"{around}{more}.")
    elif len(cuts) == 1:
        topics["cuts"].append(f"There is a cut between {_t(cuts[0][0], level)} and {_t(cuts[0][1], level)}.")
    else:
        between = _listing([f"between {_t(a, level)} and {_t(b, level)}" for a, b in cuts])
        topics["cuts"].append(f"There are {len(cuts)} cuts: {between}.")

    texts = findings.texts
    if level == "low":
        for seen in texts[:most]:
            when = _listing([_span(a, b) for a, b in seen.spans])
            topics["text"].append(f"On-screen text {_quote(seen.text, quote)} is shown {when}.")
    elif texts:
        shown = [f"{_quote(s.text, 12)} ({_span(*s.spans[0], level)})" for s in texts[:most]]
        more = f", and {len(texts) - most} more" if len(texts) > most else ""
        topics["text"].append(f"On-screen text read: {'; '.join(shown)}{more}.")
    if level == "low":
        for a, b, said in findings.speech:
            topics["speech"].append(_said(f"{_span(a, b).capitalize()} a voice says:", _quote(said, quote)))
        for line, a, b in findings.subtitles:
            topics["subtitles"].append(_said(f"A subtitle {_span(a, b)} reads:", _quote(line, quote)))
    else:
        for a, b, said in findings.speech:
            topics["speech"].append(_said(f"At {_t(a, level)} a voice says:", _quote(said, quote)))
        for line, a, b in findings.subtitles:
            topics["subtitles"].append(_said(f"At {_t(a, level)} a subtitle reads:", _quote(line, quote)))
    return topics


def absence_sentence(findings: Findings) -> str | None:
    """What was looked for and not found, said plainly (None when text, speech and subtitles all are)."""
    missing = [name for name, got in (("on-screen text", findings.texts), ("speech", findings.speech),
                                      ("subtitles", findings.subtitles)) if not got]
    if not findings.notable:
        return "Nothing notable is found: no on-screen text, speech, subtitles or cuts."
    if missing:
        verb = "is" if missing == ["on-screen text"] or missing == ["speech"] else "are"
        return f"No {_listing(missing).replace(' and ', ' or ')} {verb} found."
    return None


def _evenly(items: list[str], budget: int) -> list[str]:
    """As many of ``items`` as fit in ``budget`` words, spread evenly over the list, in order."""
    if sum(_words(s) for s in items) <= budget:
        return items
    for count in range(len(items) - 1, 0, -1):
        chosen = [items[(2 * k + 1) * len(items) // (2 * count)] for k in range(count)]   # middles of equal shares
        if sum(_words(s) for s in chosen) <= budget:
            return chosen
    return []


def write_caption(findings: Findings, level: str, word_budget: int) -> str:
    """A caption of ``findings`` at ``level`` within ``word_budget`` words."""
    topics = finding_sentences(findings, level)
    fixed = topics["look"] + topics["cuts"] + topics["text"]
    absent = absence_sentence(findings)
    if absent:
        fixed.append(absent)
    spare = word_budget - sum(_words(s) for s in fixed)
    spoken = topics["speech"] + topics["subtitles"]
    quotes = _evenly(spoken, spare)
    if len(quotes) < len(spoken):
        # say how much is left out, then quote what still fits beside that note
        quotes = _evenly(spoken, spare - 12)
        fixed.append(f"Of {len(spoken)} lines of speech and subtitles, {len(quotes)} are quoted.")
    return _budget(" ".join(fixed + quotes), word_budget)
