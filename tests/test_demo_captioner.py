"""The demo captioner on a generated demo video: detail at the leaves, coarse summaries above."""

from __future__ import annotations

import os
import re
import shutil
import sys

import numpy as np
import pytest

from longvideo_r1.corpus import captioning, tree, video
from longvideo_r1.corpus.captioners import CaptionRequest, make_captioner
from longvideo_r1.corpus.captioners.demo import DemoCaptioner, look_at


@pytest.fixture(scope="module")
def captioned(demo_corpus):
    """Every caption of the first demo video, with its probe info and hidden script."""
    vid = demo_corpus.video_ids[0]
    info = video.probe_video(demo_corpus.video(vid))
    return info, captioning.caption_video(info, DemoCaptioner()), demo_corpus.script(vid)


def by_level(records, level):
    return [r for r in records if r.level == level]


def shown_during(record, start, end) -> bool:
    return any(start <= t < end for t in record.frame_time)


def test_one_caption_per_segment_at_every_level(captioned):
    info, records, _ = captioned
    for level in tree.LEVELS:
        assert len(by_level(records, level)) == tree.num_segments(info.width, level)
    assert [r.ids for r in records] == tree.all_ids(info.width)
    assert all(r.caption.strip() for r in records)


def test_low_captions_quote_the_signs_shown_in_their_segment(captioned):
    _, records, script = captioned
    pairs = [(sign, r) for sign in script["signs"] for r in by_level(records, "low")
             if shown_during(r, sign["start"], sign["end"])]
    assert pairs
    read = sum(f'"{sign["text"]}"' in r.caption for sign, r in pairs)
    assert read >= 0.8 * len(pairs)


def test_low_captions_never_invent_sign_text(captioned):
    _, records, script = captioned
    shown = {s["text"] for s in script["signs"]}
    quoted = {m for r in by_level(records, "low") for m in re.findall(r'reading "([^"]+)"', r.caption)}
    assert quoted and quoted <= shown


def scene_shapes_per_low_caption(records, script):
    for r in by_level(records, "low"):
        scene = next((s for s in script["scenes"] if s["start"] <= r.frame_time[0] and r.frame_time[-1] < s["end"]),
                     None)
        if scene is not None:
            for shape in scene["shapes"]:
                yield r, shape


def test_low_captions_name_the_colours_of_the_shapes_on_screen(captioned):
    _, records, script = captioned
    pairs = list(scene_shapes_per_low_caption(records, script))
    named = sum(re.search(rf"\b{shape['colour']} \w+ (moves|is seen|stays)", r.caption) is not None
                for r, shape in pairs)
    assert pairs and named >= 0.9 * len(pairs)


def test_low_captions_name_shape_kinds_and_directions_correctly(captioned):
    _, records, script = captioned
    kinds = directions = 0
    named = []
    for r, shape in scene_shapes_per_low_caption(records, script):
        match = re.search(rf"\b{shape['colour']} (circle|square|triangle|rectangle) (moves [a-z ]+?|is seen)"
                          r"( near| across| on| in|$)", r.caption)
        if match:
            named.append(shape)
            kinds += match.group(1) == shape["kind"]
            directions += shape["direction"] in match.group(2)
    assert len(named) >= 10
    assert kinds >= 0.9 * len(named)
    assert directions >= 0.75 * len(named)


def test_low_captions_name_the_background(captioned):
    _, records, script = captioned
    for r in by_level(records, "low"):
        t = r.frame_time[len(r.frame_time) // 2]
        scene = next(s for s in script["scenes"] if s["start"] <= t < s["end"])
        assert scene["background"] in r.caption


def test_subtitle_lines_appear_in_the_low_captions_covering_them(captioned):
    info, records, _ = captioned
    subs = video.parse_srt(info.subtitle_path)
    checked = 0
    for sub in subs:
        for r in by_level(records, "low"):
            if any(sub.start <= t <= sub.end for t in r.frame_time):
                assert f'"{sub.text}"' in r.caption
                checked += 1
    assert checked >= len(subs)


def test_high_captions_leave_sign_text_and_dialogue_to_the_leaves(captioned):
    _, records, script = captioned
    lines = [ln["text"] for ln in script["lines"]]
    for r in by_level(records, "high") + by_level(records, "medium"):
        for sign in script["signs"]:
            assert f'"{sign["text"]}"' not in r.caption
            if not sign["is_number"]:
                assert re.search(rf"\b{sign['text']}\b", r.caption, re.I) is None
        assert not any(line in r.caption for line in lines)


def test_high_captions_name_the_dominant_backgrounds(captioned):
    _, records, script = captioned
    for r in by_level(records, "high"):
        seconds: dict[str, float] = {}
        for s in script["scenes"]:
            overlap = min(s["end"], r.seg_end) - max(s["start"], r.seg_start)
            if overlap > 0:
                seconds[s["background"]] = seconds.get(s["background"], 0) + overlap
        assert max(seconds, key=seconds.get) in r.caption


def test_captions_stay_within_word_budgets(captioned):
    _, records, _ = captioned
    for r in records:
        assert len(r.caption.split()) <= tree.WORD_BUDGET[r.level]


def test_word_budget_truncates(captioned, demo_corpus):
    info, _, _ = captioned
    frames = video.read_frames(video.open_reader(info.path), range(0, 16))
    request = CaptionRequest("x", "low", (1, 1, 1), frames, [i / 2 for i in range(16)],
                             [["a line of dialogue that is rather long indeed"]] * 16, word_budget=7)
    caption = next(DemoCaptioner().caption_many([request]))
    assert len(caption.split()) == 7


def test_captions_depend_only_on_pixels_and_subtitles(captioned, demo_corpus, tmp_path):
    """A copy under another name, far from the generator's script, gets the very same captions."""
    info, records, _ = captioned
    shutil.copy(info.path, tmp_path / "clip.mp4")
    shutil.copy(info.subtitle_path, tmp_path / "clip.srt")
    copy = captioning.caption_video(video.probe_video(tmp_path / "clip.mp4"), DemoCaptioner())
    assert [r.caption for r in copy] == [r.caption for r in records]


def test_captioner_never_opens_generator_files(demo_corpus):
    opened: list[str] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(audit)
    try:
        vid = demo_corpus.video_ids[1]
        records = captioning.caption_video(video.probe_video(demo_corpus.video(vid)), DemoCaptioner())
    finally:
        watching[0] = False  # audit hooks cannot be removed; this one goes quiet
    assert records and any(p.endswith(".srt") for p in opened)  # the hook does see the files read
    generator_dir = str(demo_corpus.root / "generator")
    assert not [p for p in opened if p.startswith(generator_dir)]


def test_caption_many_streams_lazily(captioned):
    info, _, _ = captioned
    frames = video.read_frames(video.open_reader(info.path), range(0, 8))
    pulled = []

    def requests():
        for i in range(3):
            pulled.append(i)
            yield CaptionRequest("x", "low", (1, 1, i + 1), frames, [i * 4 + j / 2 for j in range(8)], [[]] * 8)

    stream = DemoCaptioner().caption_many(requests())
    next(stream)
    assert pulled == [0]
    assert len(list(stream)) == 2 and pulled == [0, 1, 2]


def test_ocr_can_be_switched_off(captioned):
    info, records, script = captioned
    sign = script["signs"][0]
    ids = [int(sign["start"] * info.fps) + k for k in range(2)]
    frames = video.read_frames(video.open_reader(info.path), ids)
    request = CaptionRequest("x", "low", (1, 1, 1), frames, [i / info.fps for i in ids], [[], []])
    assert f'"{sign["text"]}"' in next(DemoCaptioner().caption_many([request]))
    silent = next(DemoCaptioner(ocr=False).caption_many([request]))
    assert sign["text"] not in silent and "sign" in silent


def test_make_captioner_builds_the_demo_captioner():
    captioner = make_captioner("demo", ocr=False)
    assert isinstance(captioner, DemoCaptioner) and captioner.name == "demo" and not captioner.ocr


def test_look_at_finds_background_shapes_and_panel(captioned):
    info, _, script = captioned
    sign = script["signs"][0]
    t = (sign["start"] + sign["end"]) / 2
    frame = video.read_frames(video.open_reader(info.path), [int(t * info.fps)])[0]
    look = look_at(frame, t)
    scene = script["scenes"][sign["scene"]]
    assert look.background == scene["background"]
    x0, y0, x1, y1 = sign["box"]
    assert any(abs(px0 - x0) <= 3 and abs(py1 - y1) <= 3 for px0, py0, px1, py1 in look.panels)
    assert {t.colour for t in look.things} <= {s["colour"] for s in scene["shapes"]}


def test_frames_of_one_colour_give_a_plain_caption():
    frames = np.full((4, 90, 160, 3), (40, 80, 210), np.uint8)
    request = CaptionRequest("x", "low", (1, 1, 1), frames, [0.0, 0.5, 1.0, 1.5], [[]] * 4)
    caption = next(DemoCaptioner().caption_many([request]))
    assert "blue" in caption and "sign" not in caption.replace("No sign", "")
