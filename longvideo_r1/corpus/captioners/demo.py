"""The demo captioner: it knows only the generated demo world (``corpus/demo.py``), nothing else.

The demo videos are flat coloured backgrounds with simple coloured shapes drifting across them, light
sign panels with dark writing, and subtitles. On such frames this captioner, with no language model,
reads them well enough to drive the whole platform end to end on a CPU; on real footage its words
(palette colours, circles and squares) would be invented, so real videos go to the ``offline``
captioner (text, speech, cuts, brightness, motion) or to a VLM endpoint (``openai``).

For every frame it names the background colour (the most common colour on the frame border), finds
coloured objects (connected components of one named colour), classifies their shape from geometry,
and spots light panels with dark writing, which it reads with RapidOCR. Across a segment's frames it
follows the background over time, the motion of each object and the signs shown; then it writes
English sentences whose detail depends on the level: low captions give the full detail with times
(sign text, shapes, quoted dialogue), medium captions summarise scenes, high captions stay coarse.

It sees only what a vision-language captioner would see: ``request.frames``, ``request.frame_time``
and ``request.subtitles``. It never looks at file names or any generator metadata.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from scipy import ndimage

from longvideo_r1.corpus.captioners import CaptionRequest, subtitle_spans

# Typical RGB values of colour names. "white" and "black" are kept apart: light panels with dark
# writing are read as signs, not as shapes.
COLOUR_NAMES = {
    "red": (210, 40, 40), "orange": (240, 140, 20), "yellow": (240, 215, 40), "green": (50, 160, 60),
    "teal": (20, 140, 140), "blue": (40, 80, 210), "navy": (25, 35, 100), "purple": (120, 50, 170),
    "pink": (240, 120, 190), "brown": (125, 75, 35), "gray": (120, 120, 120), "white": (245, 245, 245),
    "black": (15, 15, 15), "cyan": (80, 200, 235), "lime": (160, 230, 50), "maroon": (100, 20, 35),
}
_NAMES = list(COLOUR_NAMES)
_WHITE, _BLACK = _NAMES.index("white"), _NAMES.index("black")
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    c = rgb / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = c @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _colour_table() -> np.ndarray:
    """Name index of every 5-bit-per-channel RGB cell (nearest name in CIELAB), as a flat lookup."""
    levels = (np.arange(32) * 8 + 4).astype(float)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    names = _srgb_to_lab(np.array(list(COLOUR_NAMES.values()), float))
    cells = _srgb_to_lab(grid)
    return np.argmin(((cells[:, None, :] - names[None, :, :]) ** 2).sum(-1), axis=1).astype(np.uint8)


_TABLE: np.ndarray | None = None


def name_pixels(frame: np.ndarray) -> np.ndarray:
    """``(H, W)`` array of colour-name indices (into :data:`COLOUR_NAMES`) for an RGB frame."""
    global _TABLE
    if _TABLE is None:
        _TABLE = _colour_table()
    f = frame.astype(np.uint16) >> 3
    return _TABLE[(f[..., 0] << 10) | (f[..., 1] << 5) | f[..., 2]]


# ---------------------------------------------------------------- one frame

@dataclass
class Thing:
    colour: str
    kind: str | None     # circle, square, triangle, rectangle, shape; None when cut by the frame edge
    x: float             # centroid as fractions of the frame width / height
    y: float


@dataclass
class FrameLook:
    time: float
    background: str
    things: list[Thing] = field(default_factory=list)
    panels: list[tuple[int, int, int, int]] = field(default_factory=list)   # x0, y0, x1, y1 in pixels
    texts: list[str] = field(default_factory=list)


def _shape_kind(mask: np.ndarray) -> str:
    h, w = mask.shape
    fill = mask.sum() / (h * w)
    if 0.3 <= fill <= 0.68:
        rows = mask.sum(1)
        top, bottom = rows[: max(1, h // 4)].mean(), rows[-max(1, h // 4):].mean()
        if top < 0.6 * bottom or bottom < 0.6 * top:
            return "triangle"
    if 0.68 < fill <= 0.89:
        return "circle"
    if fill > 0.89:
        return "square" if 0.8 <= w / h <= 1.25 else "rectangle"
    return "shape"


def look_at(frame: np.ndarray, time: float) -> FrameLook:
    """Background colour, coloured objects and sign-like panels of one frame."""
    names = name_pixels(frame)
    h, w = names.shape
    border = np.concatenate([names[0], names[-1], names[:, 0], names[:, -1]])
    bg = int(np.bincount(border, minlength=len(_NAMES)).argmax())
    look = FrameLook(time, _NAMES[bg])
    min_area = max(12, int(0.0025 * h * w))

    # Sign-like regions: a light, neutral blob holding dark strokes (a panel with writing on it).
    if bg != _WHITE:
        light = names == _WHITE
        labels, n = ndimage.label(light)
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            bh, bw = box[0].stop - box[0].start, box[1].stop - box[1].start
            if bh < 0.08 * h or bw < bh or bh * bw < 0.01 * h * w:
                continue
            inside = names[box]
            dark = (inside == _BLACK).mean()
            if (labels[box] == i).mean() > 0.35 and 0.03 <= dark <= 0.6:
                look.panels.append((box[1].start, box[0].start, box[1].stop, box[0].stop))

    counts = np.bincount(names.ravel(), minlength=len(_NAMES))
    for c in np.flatnonzero(counts >= min_area):
        if c in (bg, _WHITE, _BLACK):
            continue
        mask = ndimage.binary_opening(names == c)  # drops the thin colour fringes of compressed edges
        labels, n = ndimage.label(mask)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel())
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            if areas[i] < min_area:
                continue
            y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
            if any(px0 - 3 <= x0 and x1 <= px1 + 3 and py0 - 3 <= y0 and y1 <= py1 + 3
                   for px0, py0, px1, py1 in look.panels):
                continue
            part = labels[box] == i
            # The outline is only trustworthy when the object is whole: not cut by the frame edge,
            # and not overlapped by another object or a panel (its surroundings are all background).
            cut = y0 == 0 or x0 == 0 or y1 == h or x1 == w
            if not cut:
                # look at a ring 3-5 px out, past the blended colours that compression leaves at edges
                ya, yb, xa, xb = max(0, y0 - 5), min(h, y1 + 5), max(0, x0 - 5), min(w, x1 + 5)
                own = labels[ya:yb, xa:xb] == i
                ring = ndimage.binary_dilation(own, iterations=5) & ~ndimage.binary_dilation(own, iterations=2)
                cut = (names[ya:yb, xa:xb][ring] == bg).mean() < 0.85
            yy, xx = np.nonzero(part)
            look.things.append(Thing(_NAMES[c], None if cut else _shape_kind(part),
                                     (x0 + xx.mean() + 0.5) / w, (y0 + yy.mean() + 0.5) / h))
    return look


# ---------------------------------------------------------------- wording helpers

def _t(seconds: float) -> str:
    return f"{seconds:.1f}".rstrip("0").rstrip(".") + " s"


def _span(a: float, b: float) -> str:
    return f"at {_t(a)}" if b - a < 0.05 else f"from {_t(a)} to {_t(b)}"


def _listing(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _count_word(n: int) -> str:
    return _NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else str(n)


def _plural(kind: str) -> str:
    return kind + "s"


def _budget(text: str, words: int) -> str:
    parts = text.split()
    return text if len(parts) <= words else " ".join(parts[:words])


# ---------------------------------------------------------------- across frames

def _background_runs(looks: list[FrameLook]) -> list[tuple[str, float, float, list[FrameLook]]]:
    """Consecutive frames sharing a background, a one-frame blip folded into its neighbours."""
    runs: list[list] = []
    for look in looks:
        if runs and runs[-1][0] == look.background:
            runs[-1][2] = look.time
            runs[-1][3].append(look)
        else:
            runs.append([look.background, look.time, look.time, [look]])
    merged: list[list] = []
    for run in runs:
        if merged and len(run[3]) == 1 and len(runs) > 1 and run is not runs[-1]:
            merged[-1][3].append(run[3][0])
            merged[-1][2] = run[2]
            continue
        if merged and merged[-1][0] == run[0]:
            merged[-1][2] = run[2]
            merged[-1][3].extend(run[3])
        else:
            merged.append(run)
    return [tuple(r) for r in merged]


def _describe_things(looks: list[FrameLook]) -> list[str]:
    """One phrase per coloured object seen in these frames (same background): kind, motion, place."""
    by_colour: dict[str, list[tuple[FrameLook, list[Thing]]]] = {}
    for look in looks:
        groups: dict[str, list[Thing]] = {}
        for thing in look.things:
            groups.setdefault(thing.colour, []).append(thing)
        for colour, things in groups.items():
            by_colour.setdefault(colour, []).append((look, things))
    phrases = []
    for colour, seen in sorted(by_colour.items(), key=lambda kv: -len(kv[1])):
        if len(seen) < max(1, 0.2 * len(looks)):
            continue
        kinds = Counter(t.kind for _, things in seen for t in things if t.kind)
        kind = kinds.most_common(1)[0][0] if kinds else "shape"
        many = Counter(len(things) for _, things in seen).most_common(1)[0][0]
        name = f"{_a(colour)} {colour} {kind}" if many == 1 else f"{_count_word(many)} {colour} {_plural(kind)}"
        track = [(look.time, things[0].x, things[0].y) for look, things in seen if len(things) == 1]
        xs = np.array([p[1] for p in track]) if track else np.array([0.5])
        ys = np.array([p[2] for p in track]) if track else np.array([0.5])
        motion = None
        if len(track) >= 2:
            # a jump of a third of the frame is an object leaving one side and coming back at the other
            steps = [((b[1] - a[1]) / (b[0] - a[0]), (b[2] - a[2]) / (b[0] - a[0]))
                     for a, b in zip(track, track[1:])
                     if b[0] > a[0] and max(abs(b[1] - a[1]), abs(b[2] - a[2])) < 0.33]
            if steps:
                vx, vy = np.median(np.array(steps), axis=0)
                if max(abs(vx), abs(vy)) < 0.008:
                    motion = "stays still"
                elif abs(vx) >= abs(vy):
                    motion = "moves from left to right" if vx > 0 else "moves from right to left"
                else:
                    motion = "moves downward" if vy > 0 else "moves upward"
        if motion in ("moves from left to right", "moves from right to left"):
            where = {0: "near the top", 1: "across the middle", 2: "near the bottom"}[min(2, int(ys.mean() * 3))]
        elif motion in ("moves downward", "moves upward"):
            where = {0: "on the left side", 1: "in the centre", 2: "on the right side"}[min(2, int(xs.mean() * 3))]
        else:
            vertical = ("upper", "middle", "lower")[min(2, int(ys.mean() * 3))]
            horizontal = ("left", "centre", "right")[min(2, int(xs.mean() * 3))]
            where = "in the centre" if (vertical, horizontal) == ("middle", "centre") else \
                f"in the {vertical} {horizontal}" if vertical != "middle" else f"on the {horizontal}"
        verb = motion or ("are seen" if many > 1 else "is seen")
        if many > 1 and motion:
            verb = verb.replace("moves", "move").replace("stays", "stay")
        phrases.append(f"{name} {verb} {where}")
    return phrases


def _sign_events(looks: list[FrameLook], gap: float) -> list[tuple[str | None, float, float]]:
    """Consecutive frames showing the same sign text (None: a panel seen but not read)."""
    events: list[list] = []
    for look in looks:
        texts = look.texts or ([None] if look.panels else [])
        for text in texts:
            last = next((e for e in reversed(events) if e[0] == text), None)
            if last is not None and look.time - last[2] <= gap:
                last[2] = look.time
            else:
                events.append([text, look.time, look.time])
    # a panel read in some frames and not in others is one sign: keep only what was read
    read = [e for e in events if e[0] is not None]
    events = read + [e for e in events if e[0] is None and
                     not any(r[1] - gap <= e[2] and e[1] <= r[2] + gap for r in read)]
    return sorted((tuple(e) for e in events), key=lambda e: e[1])


def detail_sentences(request: CaptionRequest, looks: list[FrameLook]) -> dict[str, list[str]]:
    """The sentences of a low-level caption grouped by topic, each group in caption order.

    Keys: ``background`` (one sentence: the colour over time), ``shapes`` (coloured objects, kind,
    motion and place, per background), ``signs`` (one sentence per sign shown, with its text when it
    was read) and ``dialogue`` (one sentence per subtitle line). The low caption is these groups
    joined in that order; the demo video_qa tool picks the groups a question asks about.
    """
    t0, t1 = request.frame_time[0], request.frame_time[-1]
    runs = _background_runs(looks)
    topics: dict[str, list[str]] = {"background": [], "shapes": [], "signs": [], "dialogue": []}
    if len(runs) == 1:
        topics["background"].append(f"From {_t(t0)} to {_t(t1)} the background is {runs[0][0]}.")
    else:
        changes = "; ".join(f"at about {_t(r[1])} it changes to {r[0]}" for r in runs[1:])
        topics["background"].append(f"From {_t(t0)} to {_t(t1)} the background starts {runs[0][0]}; {changes}.")
    for colour, a, b, run_looks in runs:
        phrases = _describe_things(run_looks)
        if not phrases:
            continue
        lead = f"On the {colour} background, " if len(runs) > 1 else ""
        body = _listing(phrases)
        topics["shapes"].append((lead + body)[0].upper() + (lead + body)[1:] + ".")
    for text, a, b in _sign_events(looks, gap=1.6):
        if text is None:
            topics["signs"].append(f"A white sign with writing appears {_span(a, b)}, but its text cannot be read.")
        else:
            topics["signs"].append(f'A white sign reading "{text}" appears {_span(a, b)}.')
    for line, a, b in subtitle_spans(request):
        topics["dialogue"].append(f'At {_t(a)} someone says: "{line}"')
    return topics


# ---------------------------------------------------------------- the captioner

class DemoCaptioner:
    """Demo-world captions from pixel statistics, RapidOCR and subtitles; no model weights beyond the OCR's.

    ``ocr``: read sign text (low level only, where the detail belongs). ``frames_per_level``: at most
    this many distinct frames are analysed per caption (default: all the corpus sends, 128/64/32).
    ``ocr_min_score``: drop OCR reads below it. ``ocr_cache_size``: signs remembered by thumbnail.
    """

    name = "demo"

    def __init__(self, ocr: bool = True, ocr_min_score: float = 0.6, ocr_cache_size: int = 4096,
                 frames_per_level: dict[str, int] | None = None):
        self.ocr = ocr
        self.ocr_min_score = ocr_min_score
        self.ocr_cache_size = ocr_cache_size
        self.frames_per_level = {"high": 128, "medium": 64, "low": 32, **(frames_per_level or {})}
        self._engine = None
        self._ocr_cache: OrderedDict[bytes, str | None] = OrderedDict()
        self.ocr_calls = 0   # how many crops went to the OCR model (the rest came from the cache)

    # ------------------------------------------------------------ public

    def caption_many(self, requests: Iterable[CaptionRequest]) -> Iterator[str]:
        for request in requests:
            yield self.caption(request)

    def caption(self, request: CaptionRequest) -> str:
        looks = self.look(request)
        writer = {"low": self._low, "medium": self._medium, "high": self._high}[request.level]
        return _budget(writer(request, looks), request.word_budget)

    # ------------------------------------------------------------ seeing

    def look(self, request: CaptionRequest) -> list[FrameLook]:
        """What each distinct frame of the request shows (sign text is read at the low level only)."""
        times = list(request.frame_time)
        # Sampled frames repeat when a segment is short; look at each distinct time once.
        distinct = [i for i, t in enumerate(times) if i == 0 or t != times[i - 1]]
        limit = self.frames_per_level.get(request.level, 32)
        if len(distinct) > limit:
            distinct = [distinct[int(j)] for j in np.linspace(0, len(distinct) - 1, limit)]
        read = self.ocr and request.level == "low"
        looks = []
        for i in distinct:
            frame = np.asarray(request.frames[i])
            look = look_at(frame, float(times[i]))
            if read:
                look.texts = [t for t in (self._read(frame, box) for box in look.panels) if t]
            looks.append(look)
        return looks

    def _read(self, frame: np.ndarray, box: tuple[int, int, int, int]) -> str | None:
        """OCR of one panel, cached on a coarse black-and-white thumbnail of the panel."""
        from PIL import Image

        x0, y0, x1, y1 = box
        inset = max(2, (y1 - y0) // 12)
        crop = frame[y0 + inset:y1 - inset, x0 + inset:x1 - inset]
        if crop.size == 0:
            return None
        gray = np.asarray(Image.fromarray(crop).convert("L").resize((48, 12), Image.BILINEAR))
        key = np.packbits(gray > 128).tobytes() + bytes([min(255, (x1 - x0) // 4), min(255, (y1 - y0) // 4)])
        if key in self._ocr_cache:
            self._ocr_cache.move_to_end(key)
            return self._ocr_cache[key]
        text = self._recognise(crop)
        self._ocr_cache[key] = text
        if len(self._ocr_cache) > self.ocr_cache_size:
            self._ocr_cache.popitem(last=False)
        return text

    def _recognise(self, crop: np.ndarray) -> str | None:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR
            self._engine = RapidOCR()
        self.ocr_calls += 1
        # The panel crop is already one line of text: skip detection and read it directly.
        result, _ = self._engine(np.ascontiguousarray(crop), use_det=False, use_cls=False, use_rec=True)
        if not result:
            return None
        text, score = result[0][0], float(result[0][1])
        text = " ".join(text.split())
        return text if text and score >= self.ocr_min_score else None

    # ------------------------------------------------------------ writing

    def _low(self, request: CaptionRequest, looks: list[FrameLook]) -> str:
        topics = detail_sentences(request, looks)
        sentences = topics["background"] + topics["shapes"] + topics["signs"] + topics["dialogue"]
        if not topics["signs"] and not topics["dialogue"]:
            sentences.append("No sign or dialogue appears.")
        return " ".join(sentences)

    def _medium(self, request: CaptionRequest, looks: list[FrameLook]) -> str:
        t0, t1 = request.frame_time[0], request.frame_time[-1]
        runs = _background_runs(looks)
        if len(runs) == 1:
            sentences = [f"Between {_t(t0)} and {_t(t1)} the scene keeps a {runs[0][0]} background."]
        else:
            steps = [f"{runs[0][0]} until about {round(runs[1][1])} s"]
            steps += [f"{r[0]} from about {round(r[1])} s" for r in runs[1:]]
            sentences = [f"Between {_t(t0)} and {_t(t1)} the background goes through {len(runs)} scenes: "
                         f"{_listing(steps)}."]
        shapes: Counter = Counter()
        for look in looks:
            for thing in look.things:
                if thing.kind:
                    shapes[(thing.colour, thing.kind)] += 1
        common = [f"{colour} {_plural(kind)}" for (colour, kind), n in shapes.most_common(8)
                  if n >= max(2, 0.1 * len(looks) / max(1, len(runs)))]
        if common:
            sentences.append(f"Coloured shapes drift across the frame, among them {_listing(common)}.")
        signs = _sign_events(looks, gap=3.0)
        if signs:
            when = _listing([f"{round(a)} s" for _, a, _ in signs[:6]])
            times = {1: "once", 2: "twice"}.get(len(signs), f"{_count_word(len(signs))} times")
            sentences.append(f"Brief text signs appear {times} (around {when}).")
        lines = subtitle_spans(request)
        if lines:
            sentences.append(f"Someone speaks {_count_word(len(lines))} short "
                             f"line{'s' if len(lines) > 1 else ''} of dialogue, around "
                             f"{_listing([f'{round(a)} s' for _, a, _ in lines[:6]])}.")
        else:
            sentences.append("Nobody speaks.")
        return " ".join(sentences)

    def _high(self, request: CaptionRequest, looks: list[FrameLook]) -> str:
        t0, t1 = request.frame_time[0], request.frame_time[-1]
        runs = _background_runs(looks)
        share = Counter(look.background for look in looks)
        dominant = [c for c, n in share.most_common(4) if n >= 0.1 * len(looks)]
        scenes = "a single scene" if len(runs) == 1 else f"about {_count_word(len(runs))} scenes"
        sentences = [f"From {_t(t0)} to {_t(t1)} the video passes through {scenes}, "
                     f"mostly on {_listing(dominant)} background{'s' if len(dominant) > 1 else ''}."]
        kinds = Counter(t.kind for look in looks for t in look.things if t.kind and t.kind != "shape")
        if kinds:
            mainly = _listing([_plural(k) for k, _ in kinds.most_common(2)])
            sentences.append(f"Simple coloured shapes, mainly {mainly}, move around the screen.")
        extras = []
        if any(look.panels for look in looks):
            extras.append("short text signs flash up now and then")
        if any(lines for lines in (request.subtitles or [])):
            extras.append("people talk from time to time")
        if extras:
            sentences.append(_listing(extras).capitalize() + ".")
        return " ".join(sentences)
