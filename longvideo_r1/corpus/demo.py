"""A self-contained demo corpus: long synthetic videos with CG-Bench-style questions and clue intervals.

Each video is a sequence of scenes (a named background colour, one to three moving coloured shapes),
with brief text signs and subtitled dialogue (spoken with espeak-ng when it is installed). Questions
ask about details that live in a few seconds of a long video, so an agent has to navigate the
caption tree to answer them. Everything is deterministic for a seed.

Layout written under ``out_dir``::

    videos/{video_id}.mp4     H.264 (yuv420p, libx264 with one thread), optional AAC speech track
    videos/{video_id}.srt     the dialogue
    questions.jsonl           qid, video_id, question, options[4], answer, clue_intervals, duration,
                              task_type, split
    splits.json               {"train": [...], "val": [...], "test": [...]}, split by video
    corpus.json               manifest (generator version, seed, fps, size, per-video facts)
    generator/{video_id}.json the hidden scene script (ground truth; captioners must never read it)

Run ``python -m longvideo_r1.corpus.demo OUT_DIR`` to write the default corpus.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from longvideo_r1.corpus.video import Subtitle, write_srt
from longvideo_r1.errors import InputError

GENERATOR_VERSION = "demo-1"
TASK_TYPES = ("text_detail", "after_dialogue", "event_order", "count")
LETTERS = "ABCD"

# Named colours far enough apart to survive H.264 chroma subsampling and still be told apart.
PALETTE = {
    "red": (210, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (240, 215, 40),
    "green": (50, 160, 60),
    "teal": (20, 140, 140),
    "blue": (40, 80, 210),
    "navy": (25, 35, 100),
    "purple": (120, 50, 170),
    "pink": (240, 120, 190),
    "brown": (125, 75, 35),
    "gray": (120, 120, 120),
}
SHAPE_KINDS = ("circle", "square", "triangle")
DIRECTIONS = ("left to right", "right to left", "downward", "upward")
PANEL_FILL = (248, 248, 248)
PANEL_INK = (12, 12, 12)

SIGN_WORDS = (
    "MAPLE", "COMET", "ORBIT", "PEPPER", "VELVET", "CANYON", "FALCON", "BREEZE", "MARBLE", "RIVER",
    "SUMMIT", "PILOT", "GARNET", "WALNUT", "HONEY", "CEDAR", "MEADOW", "TIGER", "PLANET", "CASTLE",
    "ROCKET", "ISLAND", "PUZZLE", "SILVER", "WINTER", "CACTUS", "JUNGLE", "LEMON", "PARROT", "BANJO",
    "HARBOR", "LANTERN", "TICKET", "BASKET", "COMPASS", "KETTLE", "GARDEN", "BRIDGE", "TOWER",
    "MARKET", "STATION", "MUSEUM", "ANCHOR", "CANDLE", "MIRROR", "VIOLIN", "CAMERA", "LADDER",
)
NOUNS = ("lantern", "ticket", "basket", "compass", "kettle", "umbrella", "blanket", "ladder", "violin",
         "camera", "notebook", "bicycle", "hammer", "candle", "mirror", "helmet", "wallet", "teapot",
         "scarf", "anchor")
PLACES = ("harbor", "station", "market", "garden", "bridge", "tower", "library", "bakery", "museum",
          "pier", "orchard", "chapel", "stadium", "quarry", "canal")
NAMES = ("Ada", "Ben", "Clara", "Dev", "Elena", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kira",
         "Leo", "Mina", "Omar", "Priya", "Rosa", "Sam", "Tariq", "Una", "Viktor")
LINE_TEMPLATES = (
    "{name}, did you remember to bring the {noun}?",
    "The {noun} is waiting for us at the {place}.",
    "I left my {noun} near the {place} this morning.",
    "Let's meet {name} by the {place} at {hour} o'clock.",
    "Have you ever seen a {noun} that big, {name}?",
    "{name} says the {place} closes early today.",
    "We could take the long way past the {place}.",
    "Nobody told me the {noun} was broken.",
    "Keep an eye on the {noun}, {name}.",
    "That reminds me of the old {place} downtown.",
    "Wait, I think I dropped the {noun} at the {place}.",
    "{name} wants to repaint the {place} this weekend.",
    "Is the {noun} still in the car, {name}?",
    "The {place} looked different at {hour} o'clock.",
)
HOURS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")

_FONT_PATHS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
               "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf")
_SAMPLE_RATE = 16000   # of the speech track; espeak-ng speaks at 22050 Hz and is resampled
_ESPEAK_RATE = 22050


# ---------------------------------------------------------------- the scene script

@dataclass
class Shape:
    kind: str
    colour: str
    size: int
    direction: str
    speed: float        # pixels per second
    x0: float           # top-left corner at the start of the scene
    y0: float


@dataclass
class Scene:
    index: int
    start: float
    end: float
    background: str
    shapes: list[Shape] = field(default_factory=list)

    def description(self) -> str:
        things = [f"{_a(s.colour)} {s.colour} {s.kind}" for s in self.shapes]
        listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
        verb = "moves" if len(things) == 1 else "move"
        return f"{listed} {verb} over {_a(self.background)} {self.background} background"


@dataclass
class Sign:
    start: float
    end: float
    text: str
    is_number: bool
    scene: int
    box: tuple[int, int, int, int]   # x0, y0, x1, y1 of the panel in pixels


@dataclass
class Line:
    start: float
    end: float
    text: str


@dataclass
class Script:
    video_id: str
    duration: float
    fps: int
    size: tuple[int, int]
    scenes: list[Scene]
    signs: list[Sign]
    lines: list[Line]
    sign_cues: list[tuple[int, int]]    # (line index, sign index): the sign appears right after the line
    scene_cues: list[tuple[int, int]]   # (line index, scene index): that scene starts right after the line


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _overlaps(a: float, b: float, spans, gap: float) -> bool:
    return any(a < e + gap and s < b + gap for s, e in spans)


def _scene_at(scenes: list[Scene], t: float) -> Scene:
    for scene in scenes:
        if scene.start <= t < scene.end:
            return scene
    return scenes[-1]


def _make_scenes(rng: np.random.Generator, duration: float, size: tuple[int, int]) -> list[Scene]:
    lo = min(20.0, duration / 8)
    hi = min(240.0, max(2 * lo, duration / 4))
    bounds = [0.0]
    while duration - bounds[-1] > lo:
        length = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        bounds.append(min(duration, round(bounds[-1] + length, 1)))
    if duration - bounds[-1] > 0:
        bounds[-1] = duration  # a leftover shorter than a scene joins the last one
    width, height = size
    names = list(PALETTE)
    scenes: list[Scene] = []
    seen: set[str] = set()
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        previous = scenes[-1].background if scenes else None
        background = str(rng.choice([c for c in names if c != previous]))
        for _ in range(20):  # every scene gets a description no other scene shares
            shapes = []
            for colour in rng.choice(_shape_colours(background), size=int(rng.integers(1, 4)), replace=False):
                side = int(rng.integers(round(0.15 * height), round(0.25 * height) + 1))
                shapes.append(Shape(str(rng.choice(SHAPE_KINDS)), str(colour), side, str(rng.choice(DIRECTIONS)),
                                    round(float(rng.uniform(0.03, 0.08)) * width, 2),
                                    float(rng.integers(0, width - side)), float(rng.integers(0, height - side))))
            scene = Scene(i, start, end, background, shapes)
            if scene.description() not in seen:
                break
        seen.add(scene.description())
        scenes.append(scene)
    return scenes


def _shape_colours(background: str) -> list[str]:
    bg = np.array(PALETTE[background], float)
    return [c for c, rgb in PALETTE.items() if np.linalg.norm(np.array(rgb, float) - bg) > 110]


def _line_seconds(text: str) -> float:
    return round(min(5.0, max(1.6, 0.32 * len(text.split()) + 0.8)), 1)


def _make_lines_text(rng: np.random.Generator, count: int) -> list[str]:
    texts: list[str] = []
    while len(texts) < count:
        text = str(rng.choice(LINE_TEMPLATES)).format(name=rng.choice(NAMES), noun=rng.choice(NOUNS),
                                                       place=rng.choice(PLACES), hour=rng.choice(HOURS))
        if text not in texts:
            texts.append(text)
    return texts


def make_script(video_id: str, duration: float, fps: int, size: tuple[int, int],
                rng: np.random.Generator) -> Script:
    """Draw one video's scenes, signs and dialogue. Signs never span a scene change."""
    scenes = _make_scenes(rng, duration, size)
    words = [str(w) for w in rng.permutation(SIGN_WORDS)]
    n_signs = max(6, round(duration / 60))
    n_numbers = max(1, round(0.3 * n_signs))
    texts = words[: n_signs - n_numbers]
    numbers = [str(n) for n in rng.choice(np.arange(12, 990), size=n_numbers, replace=False)]
    texts = [str(t) for t in rng.permutation(texts + numbers)]
    n_lines = max(6, round(duration / 30))
    line_texts = _make_lines_text(rng, n_lines)
    n_cues = int(np.clip(round(duration / 900) + 1, 1, 3))

    signs: list[Sign] = []
    lines: list[Line] = []
    sign_cues: list[tuple[int, int]] = []
    scene_cues: list[tuple[int, int]] = []
    quiet: list[tuple[float, float]] = []  # no sign may show while a cue line is spoken

    def place_sign(text: str, start: float) -> Sign | None:
        length = round(float(rng.uniform(2.0, 6.0)) * 2) / 2
        end = round(start + length, 1)
        scene = _scene_at(scenes, start)
        if start < scene.start + 1 or end > scene.end - 1 or end > duration - 1:
            return None
        if _overlaps(start, end, [(s.start, s.end) for s in signs], 3.0) or _overlaps(start, end, quiet, 0.0):
            return None
        sign = Sign(start, end, text, text.isdigit(), scene.index, _panel_box(text, size, rng))
        signs.append(sign)
        return sign

    def place_line(text: str, start: float, gap: float = 1.0) -> Line | None:
        end = round(start + _line_seconds(text), 1)
        if start < 0.5 or end > duration - 0.5 or _overlaps(start, end, [(ln.start, ln.end) for ln in lines], gap):
            return None
        line = Line(start, end, text)
        lines.append(line)
        return line

    # Dialogue lines followed at once by a sign; the sign's word is never spoken in the cue line.
    for _ in range(200):
        if len(sign_cues) >= n_cues or not texts or not line_texts:
            break
        text = line_texts[-1]
        word = next((t for t in texts if t.lower() not in text.lower()), None)
        start = round(float(rng.uniform(2, duration - 12)), 1)
        end = round(start + _line_seconds(text), 1)
        if word is None or _overlaps(start - 4, end, [(s.start, s.end) for s in signs], 0.0):
            continue
        sign_start = round(end + float(rng.uniform(0.5, 1.5)), 1)
        if _scene_at(scenes, start).index != _scene_at(scenes, sign_start).index:
            continue
        if _overlaps(start, end, [(ln.start, ln.end) for ln in lines], 4.0):
            continue
        if place_sign(word, sign_start) is None:
            continue
        if place_line(text, start) is None:
            signs.pop()
            continue
        quiet.append((start - 2.0, end))
        line_texts.pop()
        texts.remove(word)
        sign_cues.append((len(lines) - 1, len(signs) - 1))

    # Dialogue lines that end just before a scene change.
    for scene in [scenes[1 + i] for i in rng.permutation(len(scenes) - 1)]:
        if len(scene_cues) >= n_cues or not line_texts:
            break
        text = line_texts[-1]
        start = round(scene.start - float(rng.uniform(1.0, 2.5)) - _line_seconds(text), 1)
        previous = scenes[scene.index - 1]
        if start < previous.start + 1:
            continue
        if place_line(text, start, gap=4.0) is None:
            continue
        line_texts.pop()
        scene_cues.append((len(lines) - 1, scene.index))

    # Everything else at random free times.
    for text in texts:
        for _ in range(50):
            if place_sign(text, round(float(rng.uniform(1, duration - 7)), 1)) is not None:
                break
    cue_signs = {signs[j].start for _, j in sign_cues}
    for text in line_texts:
        for _ in range(50):
            start = round(float(rng.uniform(1, duration - 6)), 1)
            end = start + _line_seconds(text)
            # keep filler lines away from the moments the after-dialogue questions point at
            if any(start - 6 < t < end + 6 for t in cue_signs) or \
                    any(abs(scenes[k].start - end) < 6 for _, k in scene_cues):
                continue
            if place_line(text, start) is not None:
                break

    order = sorted(range(len(lines)), key=lambda i: lines[i].start)
    where = {old: new for new, old in enumerate(order)}
    lines = [lines[i] for i in order]
    sign_order = sorted(range(len(signs)), key=lambda i: signs[i].start)
    sign_where = {old: new for new, old in enumerate(sign_order)}
    signs = [signs[i] for i in sign_order]
    return Script(video_id, duration, fps, size, scenes, signs, lines,
                  [(where[a], sign_where[b]) for a, b in sign_cues], [(where[a], b) for a, b in scene_cues])


# ---------------------------------------------------------------- rendering

def _font(size_px: int):
    from PIL import ImageFont

    for path in _FONT_PATHS:
        if Path(path).is_file():
            return ImageFont.truetype(path, size_px)
    return ImageFont.load_default(size=size_px)


def _panel_size(text: str, size: tuple[int, int]) -> tuple[int, int]:
    font = _font(round(0.145 * size[1]))
    left, top, right, bottom = font.getbbox(text)
    return right - left + round(0.07 * size[1]) * 2, round(0.23 * size[1])


def _panel_box(text: str, size: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = size
    pw, ph = _panel_size(text, size)
    cx, cy = [(0.5, 0.22), (0.5, 0.5), (0.3, 0.3), (0.7, 0.3), (0.5, 0.74)][int(rng.integers(0, 5))]
    x0 = int(np.clip(round(cx * width - pw / 2), 2, width - pw - 2))
    y0 = int(np.clip(round(cy * height - ph / 2), 2, height - ph - 2))
    return x0, y0, x0 + pw, y0 + ph


def _render_panel(text: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    font = _font(round(0.145 * size[1]))
    pw, ph = _panel_size(text, size)
    image = Image.new("RGB", (pw, ph), PANEL_FILL)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, pw - 1, ph - 1], outline=PANEL_INK, width=2)
    left, top, right, bottom = font.getbbox(text)
    draw.text(((pw - (right - left)) // 2 - left, (ph - (bottom - top)) // 2 - top), text, font=font, fill=PANEL_INK)
    return np.asarray(image)


def _shape_mask(kind: str, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side] + 0.5
    if kind == "circle":
        return (yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2) ** 2
    if kind == "triangle":  # apex up, base at the bottom
        return np.abs(xx - side / 2) <= yy / 2
    return np.ones((side, side), bool)


def _shape_position(shape: Shape, dt: float, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner after ``dt`` seconds; a shape leaving one side comes back from the other."""
    width, height = size
    x, y = shape.x0, shape.y0
    step = shape.speed * dt
    if shape.direction in ("left to right", "right to left"):
        period = width + shape.size
        x = (x + shape.size + (step if shape.direction == "left to right" else -step)) % period - shape.size
    else:
        period = height + shape.size
        y = (y + shape.size + (step if shape.direction == "downward" else -step)) % period - shape.size
    return int(round(x)), int(round(y))


def _paste(frame: np.ndarray, mask: np.ndarray, colour, x: int, y: int) -> None:
    h, w = mask.shape
    fh, fw = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, fw), min(y + h, fh)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1][mask[y0 - y:y1 - y, x0 - x:x1 - x]] = colour


def render_frames(script: Script):
    """Yield every frame of the video as an ``(H, W, 3)`` uint8 array."""
    width, height = script.size
    masks = {(s.kind, s.size): _shape_mask(s.kind, s.size) for sc in script.scenes for s in sc.shapes}
    panels = [_render_panel(sign.text, script.size) for sign in script.signs]
    frame = np.empty((height, width, 3), np.uint8)
    num_frames = round(script.duration * script.fps)
    scene_i = sign_i = 0
    for i in range(num_frames):
        t = i / script.fps
        while scene_i + 1 < len(script.scenes) and t >= script.scenes[scene_i + 1].start:
            scene_i += 1
        scene = script.scenes[scene_i]
        frame[:] = PALETTE[scene.background]
        for shape in scene.shapes:
            x, y = _shape_position(shape, t - scene.start, script.size)
            _paste(frame, masks[shape.kind, shape.size], PALETTE[shape.colour], x, y)
        while sign_i < len(script.signs) and t >= script.signs[sign_i].end:
            sign_i += 1
        if sign_i < len(script.signs) and script.signs[sign_i].start <= t:
            x0, y0, x1, y1 = script.signs[sign_i].box
            frame[y0:y1, x0:x1] = panels[sign_i]
        yield frame


# ---------------------------------------------------------------- speech

def _speak(text: str, seconds: float) -> np.ndarray | None:
    """espeak-ng speech for one line as float32 samples, fitted into ``seconds``; None if unavailable."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    samples = None
    for rate in (170, 210, 260):
        try:
            raw = subprocess.run([exe, "-v", "en-us", "-s", str(rate), "--stdout", text], capture_output=True,
                                 timeout=30, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        # --stdout writes a streaming WAV header with a placeholder length: take the data chunk as it is.
        data = raw.find(b"data")
        if data < 0:
            return None
        pcm = raw[data + 8:]
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        if len(samples) <= seconds * _ESPEAK_RATE:
            break
    from scipy.signal import resample_poly

    samples = resample_poly(samples[: int(seconds * _ESPEAK_RATE)], 160, 221).astype(np.float32)
    fade = min(len(samples), 256)
    samples[len(samples) - fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
    return samples


@dataclass
class Speech:
    """The dialogue's audio as clips at sample offsets; the silence between them is never stored."""

    length: int                                # samples in the whole track
    clips: list[tuple[int, np.ndarray]]        # (offset, float32 samples), sorted, not overlapping

    def chunk(self, start: int, stop: int) -> np.ndarray:
        out = np.zeros(stop - start, np.float32)
        for offset, clip in self.clips:
            a, b = max(start, offset), min(stop, offset + len(clip))
            if a < b:
                out[a - start:b - start] = clip[a - offset:b - offset]
        return out


def _dialogue_audio(script: Script) -> Speech | None:
    length = int(round(script.duration * _SAMPLE_RATE))
    clips = []
    for line in script.lines:
        speech = _speak(line.text, line.end - line.start)
        if speech is None:
            return None
        at = int(line.start * _SAMPLE_RATE)
        clips.append((at, np.clip(0.8 * speech[: length - at], -1, 1)))
    return Speech(length, clips)


def encode_video(script: Script, path: Path, audio: Speech | None = None) -> int:
    """Write the script as an H.264 mp4 (keyframe every 2 s, one encoder thread: reproducible bytes)."""
    import av

    width, height = script.size
    num_frames = round(script.duration * script.fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=script.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        gop = max(1, 2 * script.fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "veryfast", "crf": "23", "threads": "1",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=_SAMPLE_RATE, layout="mono")
            sound.bit_rate = 24000
        sent = count = 0
        for i, rgb in enumerate(render_frames(script)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
            count += 1
            if sound is not None:  # interleave the speech with the pictures, frame by frame
                upto = min(audio.length, int((i + 1) / script.fps * _SAMPLE_RATE))
                if i == num_frames - 1:
                    upto = audio.length
                if upto > sent:
                    frame = av.AudioFrame.from_ndarray(audio.chunk(sent, upto)[None, :], format="fltp", layout="mono")
                    frame.sample_rate, frame.pts = _SAMPLE_RATE, sent
                    for packet in sound.encode(frame):
                        container.mux(packet)
                    sent = upto
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for packet in sound.encode():
                container.mux(packet)
    return count


# ---------------------------------------------------------------- questions

def _pick(rng: np.random.Generator, pool, k: int, exclude=()) -> list:
    pool = [p for p in dict.fromkeys(pool) if p not in exclude]
    if len(pool) <= k:
        return pool
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]


def _text_distractors(rng: np.random.Generator, script: Script, answer: str) -> list[str]:
    """Three other texts of the same kind (word or number) that this video shows or speaks about."""
    if answer.isdigit():
        shown = [s.text for s in script.signs if s.is_number and s.text != answer]
        out = _pick(rng, shown, 3)
        value = int(answer)
        near = [str(value + d) for d in (1, -1, 10, -10, 100, -100)] + [answer[::-1]]
        near = [n for n in near if len(n) >= 2 and not n.startswith(("0", "-"))]
        for n in near:
            if len(out) == 3:
                break
            if n != answer and n not in out:
                out.append(n)
        return out
    shown = [s.text for s in script.signs if not s.is_number and s.text != answer]
    out = _pick(rng, shown, 3)
    spoken = [w.upper() for ln in script.lines for w in ln.text.replace(",", " ").replace(".", " ")
              .replace("?", " ").split() if w.upper() in SIGN_WORDS]
    out += _pick(rng, spoken, 3 - len(out), exclude=set(out) | {answer})
    out += _pick(rng, SIGN_WORDS, 3 - len(out), exclude=set(out) | {answer})
    return out


def _count_options(rng: np.random.Generator, n: int) -> list[str]:
    near = [v for v in range(n - 2, n + 4) if v >= 0 and v != n]
    return [str(v) for v in _pick(rng, near, 3)]


def _signs_in(script: Script, scene: Scene) -> list[Sign]:
    return [s for s in script.signs if s.scene == scene.index]


def _text_detail(rng, script: Script, sign: Sign) -> dict:
    scene = script.scenes[sign.scene]
    others = _signs_in(script, scene)
    kind = "number is shown" if sign.is_number else "word is written"
    if len(others) == 1:
        q = (f"During the scene where {scene.description()}, a sign appears briefly. "
             f"What {kind} on it?")
    else:
        ordinal = ORDINALS[others.index(sign)] if others.index(sign) < len(ORDINALS) else "last"
        q = (f"During the scene where {scene.description()}, {len(others)} signs appear briefly one after "
             f"another. What {kind} on the {ordinal} of them?")
    return {"task_type": "text_detail", "question": q, "answer": sign.text,
            "distractors": _text_distractors(rng, script, sign.text),
            "clue_intervals": [[sign.start, sign.end]]}


def _after_line_sign(rng, script: Script, line: Line, sign: Sign) -> dict:
    return {"task_type": "after_dialogue",
            "question": f'Right after someone says "{line.text}", a sign appears on screen. What does it say?',
            "answer": sign.text, "distractors": _text_distractors(rng, script, sign.text),
            "clue_intervals": [[line.start, sign.end]]}


def _after_line_scene(rng, script: Script, line: Line, scene: Scene) -> dict:
    before = script.scenes[scene.index - 1].background
    used = [s.background for s in script.scenes]
    options = [before] + _pick(rng, used, 2, exclude={before, scene.background})
    options += _pick(rng, list(PALETTE), 3 - len(options), exclude=set(options) | {scene.background})
    return {"task_type": "after_dialogue",
            "question": f'Right after someone says "{line.text}", the scene changes. '
                        "What colour is the new background?",
            "answer": scene.background, "distractors": options,
            "clue_intervals": [[line.start, min(script.duration, scene.start + 2.0)]]}


def _event_order(rng, script: Script, used_signs: set[int]) -> dict | None:
    events = []  # (time, label, clue)
    for i, sign in enumerate(script.signs):
        events.append((sign.start, f'the "{sign.text}" sign', [sign.start, sign.end], ("sign", i)))
    first_seen: dict[str, Scene] = {}
    for scene in script.scenes:
        first_seen.setdefault(scene.background, scene)
    for colour, scene in first_seen.items():
        if scene.index > 0:
            clue = [max(0.0, scene.start - 1.0), min(script.duration, scene.start + 3.0)]
            events.append((scene.start, f"the first {colour} background", clue, ("scene", scene.index)))
    if len(events) < 3:
        return None
    for _ in range(100):
        chosen = [events[i] for i in sorted(rng.choice(len(events), size=3, replace=False))]
        times = sorted(e[0] for e in chosen)
        if min(b - a for a, b in zip(times, times[1:])) < max(5.0, script.duration / 30):
            continue
        if sum(1 for e in chosen if e[3][0] == "sign" and e[3][1] in used_signs) > 1:
            continue
        correct = [e[1] for e in sorted(chosen, key=lambda e: e[0])]
        perms = [list(p) for p in itertools.permutations(correct) if list(p) != correct]
        wrong = [perms[i] for i in rng.choice(len(perms), size=3, replace=False)]
        listed = [chosen[i][1] for i in rng.permutation(3)]
        fmt = lambda seq: f"{seq[0]}, then {seq[1]}, then {seq[2]}"  # noqa: E731
        return {"task_type": "event_order",
                "question": f"In what order do these happen: {listed[0]}, {listed[1]} and {listed[2]}?",
                "answer": fmt(correct), "distractors": [fmt(w) for w in wrong],
                "clue_intervals": sorted(e[2] for e in chosen), "events": [e[3] for e in chosen]}
    return None


def _count_questions(rng, script: Script) -> list[dict]:
    out = []
    numbers = [s for s in script.signs if s.is_number]
    out.append({"task_type": "count", "question": "How many signs showing a number appear over the whole video?",
                "answer": str(len(numbers)), "distractors": _count_options(rng, len(numbers)),
                "clue_intervals": [[s.start, s.end] for s in numbers]})
    colours = sorted({s.background for s in script.scenes})
    colour = str(rng.choice(colours))
    scenes = [s for s in script.scenes if s.background == colour]
    out.append({"task_type": "count", "question": f"How many separate scenes have a {colour} background?",
                "answer": str(len(scenes)), "distractors": _count_options(rng, len(scenes)),
                "clue_intervals": [[s.start, s.end] for s in scenes]})
    scene = script.scenes[int(rng.integers(0, len(script.scenes)))]
    n = len(_signs_in(script, scene))
    out.append({"task_type": "count",
                "question": f"How many signs appear during the scene where {scene.description()}?",
                "answer": str(n), "distractors": _count_options(rng, n),
                "clue_intervals": [[scene.start, scene.end]]})
    return out


def make_questions(script: Script, rng: np.random.Generator, dense: bool = False) -> list[dict]:
    """CG-Bench-style multiple-choice questions about one script (options shuffled, letters balanced).

    ``dense``: a text-detail question for every sign that is not a dialogue cue (instead of 3-7),
    three event-order questions and all three count questions, whatever the length: about 2-3x the
    questions of the same video, for training videos (the video itself does not change)."""
    d = script.duration
    drafts: list[dict] = []
    cue_signs = {j for _, j in script.sign_cues}
    for i, j in script.sign_cues:
        drafts.append(_after_line_sign(rng, script, script.lines[i], script.signs[j]))
    for i, k in script.scene_cues:
        drafts.append(_after_line_scene(rng, script, script.lines[i], script.scenes[k]))
    candidates = [i for i in range(len(script.signs)) if i not in cue_signs]
    n_text = len(candidates) if dense else int(np.clip(round(d / 400) + 3, 3, 7))
    text_signs = _pick(rng, candidates, n_text)
    drafts += [_text_detail(rng, script, script.signs[i]) for i in text_signs]
    n_order = 3 if dense else 1 if d < 300 else min(3, 2 + int(d >= 1800))
    for _ in range(n_order):
        q = _event_order(rng, script, set(text_signs) | cue_signs)
        if q is not None and q["answer"] not in [x["answer"] for x in drafts]:
            q.pop("events")
            drafts.append(q)
    counts = _count_questions(rng, script)
    drafts += counts if d >= 600 or dense else counts[:2]
    # two scenes that look alike would ask one question twice with two answers: keep the first
    seen: set[str] = set()
    drafts = [q for q in drafts if not (q["question"] in seen or seen.add(q["question"]))]

    letters = []
    while len(letters) < len(drafts):
        letters += [LETTERS[i] for i in rng.permutation(4)]
    questions = []
    for n, (draft, letter) in enumerate(zip(drafts, letters)):
        options = [str(x) for x in rng.permutation(draft["distractors"])]
        if len(set(options) | {draft["answer"]}) != 4:
            raise AssertionError(f"question draft without 4 distinct options: {draft}")
        options.insert(LETTERS.index(letter), draft["answer"])
        questions.append({"qid": f"{script.video_id}_q{n:02d}", "video_id": script.video_id,
                          "question": draft["question"], "options": options, "answer": letter,
                          "clue_intervals": [[round(a, 1), round(b, 1)] for a, b in draft["clue_intervals"]],
                          "duration": round(d, 3), "task_type": draft["task_type"]})
    return questions


# ---------------------------------------------------------------- the corpus

def split_videos(video_ids: list[str], rng: np.random.Generator) -> dict[str, list[str]]:
    """Split by video: about 1/8 each to val and test, at least one to test when there are two videos."""
    n = len(video_ids)
    n_test = max(1, round(n / 8)) if n >= 2 else 0
    n_val = max(1, round(n / 8)) if n >= 3 else 0
    order = [video_ids[i] for i in rng.permutation(n)]
    return {"train": sorted(order[n_test + n_val:]), "val": sorted(order[n_test:n_test + n_val]),
            "test": sorted(order[:n_test])}


def plan_video(video_id: str, index: int, seed: int = 0, minutes: float | None = None, fps: int = 2,
               size: tuple[int, int] = (320, 180), dense: bool = False) -> tuple[Script, list[dict]]:
    """The script and questions (``dense``: see :func:`make_questions`) of the ``index``-th video of a
    corpus, without rendering anything. The script does not depend on ``dense``."""
    rng = np.random.default_rng([seed, index])
    if minutes is None:
        seconds = float(rng.uniform(20, 60)) * 60
    else:
        seconds = float(minutes) * 60 * float(rng.uniform(0.8, 1.2))
    script = make_script(video_id, float(max(60, round(seconds))), fps, size, rng)
    return script, make_questions(script, rng, dense=dense)


def generate_demo_corpus(out_dir, videos: int = 8, minutes: float | None = None, seed: int = 0, fps: int = 2,
                         size: tuple[int, int] = (320, 180), audio: bool = True, dense_train: bool = False) -> dict:
    """Write the demo corpus under ``out_dir`` and return a summary.

    ``minutes=None`` draws each video's length from 20–60 minutes; otherwise each lasts about
    ``minutes`` (±20 %, at least one minute). ``audio`` adds espeak-ng speech for the dialogue when
    espeak-ng is installed (skipped silently otherwise; subtitles are always written).
    ``dense_train``: the train split's videos get dense questions (:func:`make_questions`); validation
    and test keep the standard set, so held-out figures stay comparable.
    """
    if videos < 1:
        raise InputError(f"demo corpus: videos={videos}; ask for at least one video")
    if int(fps) != fps or fps < 1:
        raise InputError(f"demo corpus: fps={fps}; use a whole number of frames per second (e.g. 2)")
    width, height = (int(v) for v in size)
    if width < 160 or height < 90 or width % 2 or height % 2:
        raise InputError(f"demo corpus: size={size}; use even sizes of at least 160x90 (e.g. 320x180)")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "generator").mkdir(parents=True, exist_ok=True)
    for stale in itertools.chain((out / "videos").glob("demo_*"), (out / "generator").glob("demo_*.json")):
        stale.unlink()  # a previous, larger corpus in the same folder must not leave videos behind
    ids = [f"demo_{i:03d}" for i in range(videos)]
    splits = split_videos(ids, np.random.default_rng([seed, 10_000]))
    split_of = {v: name for name, vs in splits.items() for v in vs}

    manifest_videos, all_questions = [], []
    for index, video_id in enumerate(ids):
        script, questions = plan_video(video_id, index, seed, minutes, int(fps), (width, height),
                                       dense=dense_train and split_of[video_id] == "train")
        for q in questions:
            q["split"] = split_of[video_id]
        track = _dialogue_audio(script) if audio else None
        num_frames = encode_video(script, out / "videos" / f"{video_id}.mp4", track)
        write_srt(out / "videos" / f"{video_id}.srt", [Subtitle(ln.start, ln.end, ln.text) for ln in script.lines])
        hidden = asdict(script)
        hidden["questions"] = [q["qid"] for q in questions]
        (out / "generator" / f"{video_id}.json").write_text(json.dumps(hidden, indent=1))
        manifest_videos.append({"video_id": video_id, "duration": script.duration, "num_frames": num_frames,
                                "split": split_of[video_id], "scenes": len(script.scenes),
                                "signs": len(script.signs), "dialogue_lines": len(script.lines),
                                "audio": track is not None, "questions": len(questions)})
        all_questions += questions

    with open(out / "questions.jsonl", "w", encoding="utf-8") as fh:
        for q in all_questions:
            fh.write(json.dumps(q) + "\n")
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    manifest = {"generator": "longvideo_r1.corpus.demo", "version": GENERATOR_VERSION, "seed": seed,
                "dense_train": bool(dense_train),
                "fps": int(fps), "size": [width, height], "videos": manifest_videos}
    (out / "corpus.json").write_text(json.dumps(manifest, indent=1))
    by_type = {t: sum(q["task_type"] == t for q in all_questions) for t in TASK_TYPES}
    by_split = {s: sum(q["split"] == s for q in all_questions) for s in splits}
    return {"out_dir": str(out), "videos": [{k: v[k] for k in ("video_id", "duration", "num_frames", "split")}
                                           for v in manifest_videos],
            "questions": len(all_questions), "by_task_type": by_type, "by_split": by_split}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic demo corpus (videos, subtitles, questions).")
    parser.add_argument("out_dir")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=None, help="length of each video (default: 20-60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=2)
    parser.add_argument("--size", default="320x180", help="WIDTHxHEIGHT")
    parser.add_argument("--no-audio", action="store_true", help="do not synthesise speech for the dialogue")
    parser.add_argument("--dense-train", action="store_true",
                        help="a question for every sign of the train videos (2-3x the training questions)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(json.dumps(generate_demo_corpus(args.out_dir, args.videos, args.minutes, args.seed, args.fps,
                                          (width, height), audio=not args.no_audio,
                                          dense_train=args.dense_train), indent=1))


if __name__ == "__main__":
    main()
