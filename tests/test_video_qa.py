"""The video_qa backends: the frames they show, the request they send, the answers they give."""

from __future__ import annotations

import os
import re
import sys

import av
import numpy as np
import pytest

from longvideo_r1.agent import video_qa
from longvideo_r1.agent.video_qa import (VIDEO_QA_BACKENDS, DemoVideoQA, OfflineVideoQA, OpenAIVideoQA, clip_frames,
                                         extract_answer, low_part, make_video_qa, offline_query_topics)
from longvideo_r1.corpus import tree, video
from longvideo_r1.corpus.store import VideoRecord
from longvideo_r1.errors import InputError
from longvideo_r1.corpus.speech import decode_audio
from tests.chat_server import ChatServer, Fault
from tests.test_offline_captioner import MEGAMIND, draw_text, need, read_clip, write_clip

MODEL = "test-vlm"
BITS = 8      # a frame's index is written as 8 black/white vertical stripes
FRAMES = 70   # 70 frames in a width-4 tree: the flat and nested splits disagree (70 mod 64 != 0)
FPS = 4


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def encode_striped(path, size=(1280, 720), frames=FRAMES, fps=FPS):
    """An H.264 clip whose frame i shows i in binary as vertical stripes (bit 0 leftmost)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = np.zeros((height, width, 3), np.uint8)
            for bit in range(BITS):
                if i >> bit & 1:
                    frame[:, bit * width // BITS:(bit + 1) * width // BITS] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_index(image: np.ndarray) -> int:
    """Read back the index that :func:`encode_striped` wrote into a (decoded, resized, JPEG'd) frame."""
    w = image.shape[1]
    centres = [(2 * bit + 1) * w // (2 * BITS) for bit in range(BITS)]
    return sum(1 << bit for bit, x in enumerate(centres) if image[:, x].mean() > 128)


@pytest.fixture(scope="module")
def striped(tmp_path_factory) -> VideoRecord:
    path = encode_striped(tmp_path_factory.mktemp("striped") / "stripes.mp4")
    video.write_srt(path.with_suffix(".srt"), [video.Subtitle(2.0, 3.0, "Look at the stripes")])
    info = video.probe_video(path)
    assert (info.num_frames, info.width, info.frame_width) == (FRAMES, 4, 1280)
    return VideoRecord.from_info(info, "test")


# ---------------------------------------------------------------- which frames

def test_flat_and_nested_splits_pick_the_documented_frames(striped):
    w = striped.width
    # Flat: 70 frames in 64 parts, the first 6 parts get 2 frames. Nested: 18,18,17,17 → 5,5,4,4 → 2,1,1,1.
    assert list(low_part(FRAMES, w, (1, 1, 2), "flat")) == [2, 3]
    assert list(low_part(FRAMES, w, (1, 1, 2), "nested")) == [2]
    assert list(low_part(FRAMES, w, (2, 1, 1), "flat")) == [22]
    assert list(low_part(FRAMES, w, (2, 1, 1), "nested")) == [18, 19]
    assert list(low_part(FRAMES, w, (4, 4, 4), "flat")) == list(low_part(FRAMES, w, (4, 4, 4), "nested")) == [69]
    # Over the whole tree the nested split matches the reference tool's construction.
    for index in range(w ** 3):
        ids = tree.ids_from_flat("low", index, w)
        part = np.arange(FRAMES)
        for i in ids:
            part = np.array_split(part, w)[i - 1]
        assert list(low_part(FRAMES, w, ids, "nested")) == list(part)
        assert list(low_part(FRAMES, w, ids, "flat")) == list(tree.level_parts(FRAMES, w, "low")[index])

    for split, want in (("flat", [22]), ("nested", [18, 19])):
        frames, times, subs = clip_frames(striped, (2, 1, 1), split=split)
        got = [frame_index(f) for f in frames]
        assert got == list(np.linspace(want[0], want[-1], 16, dtype=int))
        assert times == [round(i / FPS, 1) for i in got]


def test_clip_frames_are_resized_and_carry_their_subtitles(striped):
    frames, times, subs = clip_frames(striped, (1, 2, 1))   # flat part 4: frames 8 and 9 (2.0 s, 2.25 s)
    assert frames.shape == (16, 576, 1024, 3) and frames.dtype == np.uint8
    # linspace over a 2-frame part, truncated to int as the reference does: the second frame comes last
    assert [frame_index(f) for f in frames] == [8] * 15 + [9]
    assert times == [2.0] * 15 + [round(9 / FPS, 1)]
    assert subs == [["Look at the stripes"]] * 16
    frames, times, subs = clip_frames(striped, (1, 1, 1), num_frames=3, max_side=320)
    assert frames.shape == (3, 180, 320, 3) and [frame_index(f) for f in frames] == [0, 0, 1]
    assert subs == [[], [], []]


def test_readers_are_opened_once_per_file(striped, monkeypatch):
    opened = []
    real = video_qa.open_reader
    monkeypatch.setattr(video_qa, "open_reader", lambda path: opened.append(path) or real(path))
    video_qa.clear_caches()
    for ids in ((1, 1, 1), (3, 2, 1), (4, 4, 4)):
        clip_frames(striped, ids, num_frames=2)
    assert opened == [striped.source_path]


def test_bad_clips_are_input_errors(striped, tmp_path):
    with pytest.raises(InputError, match=r"video stripes: .*\(1, 2\).*three ids"):
        clip_frames(striped, (1, 2))
    with pytest.raises(InputError, match=r"ids run from 1 to 4"):
        clip_frames(striped, (1, 2, 5))
    with pytest.raises(InputError, match="split 'zigzag' is unknown"):
        clip_frames(striped, (1, 1, 1), split="zigzag")
    gone = VideoRecord("gone", 4, 17.5, 4.0, FRAMES, str(tmp_path / "gone.mp4"))
    with pytest.raises(InputError) as err:
        clip_frames(gone, (1, 1, 1))
    assert "video gone" in str(err.value) and str(tmp_path / "gone.mp4") in str(err.value)
    assert "rebuild" in str(err.value)
    with pytest.raises(InputError, match="video nofile: the caption store records no video file"):
        clip_frames(VideoRecord("nofile", 4, 17.5, 4.0, FRAMES), (1, 1, 1))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match=r"video junk: .*cannot be decoded"):
        clip_frames(VideoRecord("junk", 4, 17.5, 4.0, FRAMES, str(junk)), (1, 1, 1))
    changed = VideoRecord("changed", 4, 20.0, 4.0, 80, striped.source_path)
    with pytest.raises(InputError, match="has 70 frames but the caption store recorded 80"):
        clip_frames(changed, (1, 1, 1))


# ---------------------------------------------------------------- the endpoint backend

def test_the_request_holds_the_query_then_16_timed_jpeg_frames(striped):
    with ChatServer(handler=lambda r: "<reasoning>I see stripes.</reasoning><answer>Stripes.</answer>") as srv:
        qa = OpenAIVideoQA(srv.base_url, MODEL)
        text, seconds = qa.answer(striped, (2, 1, 1), "What pattern is shown?")
    assert text == "Stripes." and 0 < seconds < 5
    (got,) = srv.requests
    assert [m["role"] for m in got.messages] == ["system", "user"]
    assert "<reasoning></reasoning>" in got.system and "<answer></answer>" in got.system
    assert [kind for kind, _ in got.parts] == ["text"] + ["text", "image"] * 16
    assert got.texts[0] == "What pattern is shown?"
    ids = tree.sample_frame_ids(low_part(FRAMES, 4, (2, 1, 1)), 16)
    assert got.texts[1:] == [f"Video frame at {round(i / FPS, 1)} seconds:" for i in ids]
    assert [frame_index(img) for img in got.images] == list(ids)
    assert all(max(img.shape[:2]) <= 1024 for img in got.images)
    assert {img.shape for img in got.images} == {(576, 1024, 3)}
    assert got.payload["max_tokens"] == 1024 and "temperature" not in got.payload


def test_the_nested_split_sends_the_reference_clip(striped):
    with ChatServer(handler=lambda r: "<answer>ok</answer>") as srv:
        OpenAIVideoQA(srv.base_url, MODEL, split="nested", num_frames=4).answer(striped, (2, 1, 1), "q")
    assert [frame_index(img) for img in srv.requests[0].images] == [18, 18, 18, 19]


def test_a_reply_without_an_answer_tag_still_gives_text(striped):
    reply = "<reasoning>The frames are striped.</reasoning>\nThe clip shows black and white stripes."
    with ChatServer(handler=lambda r: reply) as srv:
        text, _ = OpenAIVideoQA(srv.base_url, MODEL, num_frames=2).answer(striped, (1, 1, 1), "what?")
    assert text == "The clip shows black and white stripes."


@pytest.mark.parametrize("reply, want", [
    ("<reasoning>a</reasoning><answer> The sign says MAPLE. </answer>", "The sign says MAPLE."),
    ("<answer>first</answer> and <answer>second</answer>", "first"),
    ("<reasoning>long thoughts</reasoning><answer>cut off mid", "cut off mid"),
    ("<reasoning>only thoughts, never finished", "only thoughts, never finished"),
    ("<think>hm</think>Plain words.", "Plain words."),
    ("Just text.", "Just text."),
])
def test_extract_answer(reply, want):
    assert extract_answer(reply) == want


def test_server_errors_are_input_errors_naming_the_endpoint(striped):
    with ChatServer(faults=lambda i: Fault(status=500)) as srv:
        qa = OpenAIVideoQA(srv.base_url, MODEL, num_frames=2, retries=1)
        with pytest.raises(InputError) as err:
            qa.answer(striped, (1, 1, 1), "what?")
    message = str(err.value)
    assert len(srv.requests) == 2
    assert srv.base_url in message and "video stripes" in message and "(1, 1, 1)" in message
    assert "HTTP 500" in message and MODEL in message and "\n" not in message
    with ChatServer(models=["another-model"]) as srv:
        with pytest.raises(InputError, match="HTTP 404.*with image input"):
            OpenAIVideoQA(srv.base_url, MODEL, num_frames=2).answer(striped, (1, 1, 1), "what?")
    assert len(srv.requests) == 1


# ---------------------------------------------------------------- the demo backend on the demo corpus

def record_of(demo_corpus, video_id: str) -> VideoRecord:
    return VideoRecord.from_info(video.probe_video(demo_corpus.video(video_id)), "demo")


def low_segment_holding(rec: VideoRecord, start: float, end: float) -> tuple[int, int, int]:
    """The low segment (flat split) that overlaps ``[start, end]`` the most."""
    parts = tree.level_parts(rec.num_frames, rec.width, "low")
    overlap = [min(end, (p[-1] + 1) / rec.fps) - max(start, p[0] / rec.fps) for p in parts]
    return tree.ids_from_flat("low", int(np.argmax(overlap)), rec.width)


@pytest.fixture(scope="module")
def demo_qa() -> DemoVideoQA:
    return DemoVideoQA()


def test_demo_reads_the_sign_of_every_text_detail_question(demo_corpus, demo_qa):
    questions = [q for q in demo_corpus.questions() if q["task_type"] == "text_detail"]
    assert questions
    for q in questions:
        rec = record_of(demo_corpus, q["video_id"])
        sign = next(s for s in demo_corpus.script(q["video_id"])["signs"]
                    if [s["start"], s["end"]] == q["clue_intervals"][0])
        text, seconds = demo_qa.answer(rec, low_segment_holding(rec, sign["start"], sign["end"]),
                                          "What word is written on the sign?")
        assert f'"{sign["text"]}"' in text, (q["qid"], text)
        assert seconds >= 0


def test_demo_names_the_background_colour(demo_corpus, demo_qa):
    vid = demo_corpus.video_ids[0]
    rec = record_of(demo_corpus, vid)
    checked = 0
    for scene in demo_corpus.script(vid)["scenes"]:
        ids = low_segment_holding(rec, scene["start"] + 2, scene["start"] + 3)
        text, _ = demo_qa.answer(rec, ids, "What colour is the background?")
        assert re.search(rf"the background is {scene['background']}\.", text), (scene, text)
        assert "sign" not in text and "says" not in text   # the answer sticks to the question
        checked += 1
    assert checked >= 3


def test_demo_follows_a_scene_change_after_a_line_of_dialogue(demo_corpus, demo_qa):
    checked = 0
    for q in demo_corpus.questions():
        if q["task_type"] != "after_dialogue" or "new background" not in q["question"]:
            continue
        rec = record_of(demo_corpus, q["video_id"])
        script = demo_corpus.script(q["video_id"])
        new = q["options"]["ABCD".index(q["answer"])]
        change = next(s["start"] for s in script["scenes"] if s["background"] == new and
                      q["clue_intervals"][0][0] < s["start"] <= q["clue_intervals"][0][1])
        text, _ = demo_qa.answer(rec, low_segment_holding(rec, change - 0.5, change + 0.5), q["question"])
        assert re.search(rf"changes to {new}\b|background is {new}\b", text), (q["qid"], text)
        checked += 1
    assert checked >= 1


def test_demo_quotes_dialogue_and_describes_shapes(demo_corpus, demo_qa):
    vid = demo_corpus.video_ids[0]
    rec = record_of(demo_corpus, vid)
    script = demo_corpus.script(vid)
    line = script["lines"][0]
    ids = low_segment_holding(rec, line["start"], line["start"] + 1)
    text, _ = demo_qa.answer(rec, ids, "What does the person say?")
    assert f'"{line["text"]}"' in text
    scene = next(s for s in script["scenes"] if s["end"] - s["start"] > 8)
    ids = low_segment_holding(rec, scene["start"] + 3, scene["start"] + 5)
    text, _ = demo_qa.answer(rec, ids, "Which shapes move, and in which direction?")
    assert any(shape["colour"] in text for shape in scene["shapes"])
    general, _ = demo_qa.answer(rec, ids, "Describe the clip.")
    assert "background is" in general


def test_demo_video_qa_never_opens_generator_files(demo_corpus, demo_qa):
    opened: list[str] = []
    watching = [True]

    def audit(event, args):
        if watching[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            opened.append(os.fsdecode(args[0]))

    rec = record_of(demo_corpus, demo_corpus.video_ids[2])
    video_qa.clear_caches()
    sys.addaudithook(audit)
    try:
        demo_qa.answer(rec, (1, 1, 1), "What is written on the sign?")
    finally:
        watching[0] = False  # audit hooks cannot be removed; this one goes quiet
    assert any(p.endswith(".srt") for p in opened)
    assert not [p for p in opened if p.startswith(str(demo_corpus.root / "generator"))]


# ---------------------------------------------------------------- the offline backend on real footage

SIGN = "PLATFORM 9"


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory) -> VideoRecord:
    """8 s of Megamind.avi (10 fps) with its own dialogue track, and a sign drawn on it from 6 s to 7.5 s."""
    frames, fps = read_clip(need(MEGAMIND), seconds=8.0, size=(360, 264), fps=10.0)
    audio = decode_audio(MEGAMIND)[: 8 * 16_000]
    path = write_clip(tmp_path_factory.mktemp("talk") / "talk.mp4", draw_text(frames, fps, SIGN, 6.0, 7.5), fps,
                      audio=audio)
    return VideoRecord.from_info(video.probe_video(path), "offline")


def test_offline_answers_a_text_query_with_the_text_read_and_its_time(talking_clip):
    qa = OfflineVideoQA()
    ids = low_segment_holding(talking_clip, 6.5, 6.7)
    text, seconds = qa.answer(talking_clip, ids, "What is written on the screen?")
    match = re.search(r'On-screen text "([^"]+)" is shown (?:at|from) ([\d.]+) s', text)
    assert match and match.group(1).replace(" ", "") == SIGN.replace(" ", ""), text
    assert 6.0 <= float(match.group(2)) < 7.5
    assert "voice" not in text and seconds > 0            # the answer sticks to what was asked
    text, _ = qa.answer(talking_clip, low_segment_holding(talking_clip, 2.0, 2.1), "What does the sign say?")
    assert "No on-screen text is read in this clip." in text


def test_offline_answers_a_speech_query_with_the_words_said_in_the_clip(talking_clip):
    qa = OfflineVideoQA()
    text, _ = qa.answer(talking_clip, low_segment_holding(talking_clip, 5.0, 5.1), "What does the woman say?")
    assert re.search(r'a voice says: "Oh, that\'s a relief', text), text   # Whisper's words, heard once
    assert "judge" not in text and "On-screen" not in text   # only the speech of this clip, nothing else
    text, _ = qa.answer(talking_clip, low_segment_holding(talking_clip, 1.0, 1.1), "Describe the clip.")
    assert "book" in text and "cover" in text and "the picture is dark" in text


def test_offline_query_topics():
    assert offline_query_topics("What is written on the sign?") == ["text"]
    assert offline_query_topics("What does he say after the title appears?") == ["speech", "text"]
    assert offline_query_topics('Who shouts "read the sign"?') == ["speech"]   # quotes are content
    assert offline_query_topics("What colour is the car?") == []


def test_make_video_qa():
    assert VIDEO_QA_BACKENDS == ("demo", "offline", "openai")
    assert isinstance(make_video_qa("demo", ocr=False), DemoVideoQA) and make_video_qa("demo").name == "demo"
    offline = make_video_qa("offline", ocr=False)
    assert isinstance(offline, OfflineVideoQA) and offline.name == "offline"
    qa = make_video_qa("openai", endpoint="http://127.0.0.1:9/v1", model=MODEL, api_key="sk-hidden")
    assert isinstance(qa, OpenAIVideoQA) and qa.name == "openai" and "sk-hidden" not in repr(qa)
    with pytest.raises(InputError, match="video_qa backend 'magic' is unknown"):
        make_video_qa("magic")
