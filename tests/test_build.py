"""`lvr1 captions build`: captions every video into the store, resumes after a crash, reports bad videos."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.build import build_store
from longvideo_r1.corpus.store import CaptionStore, read_manifest
from longvideo_r1.errors import InputError
from tests.chat_server import ChatServer
from tests.media import OPENCV_DATA, encode_ramp


def make_videos(folder, count, frames=72):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        encode_ramp(folder / f"clip_{i:02d}.mp4", frames=frames + 8 * i)
    (folder / "clip_00.srt").write_text("1\n00:00:01,000 --> 00:00:04,000\nhello there\n")
    return folder


def openai_options(srv):
    return {"endpoint": srv.base_url, "model": "test-model", "concurrency": 4}


def build_cmd(videos, store, srv, workers=1):
    return [sys.executable, "-m", "longvideo_r1.platform.cli", "captions", "build", "--videos", str(videos),
            "--out", str(store), "--captioner", "openai", "--endpoint", srv.base_url, "--model", "test-model",
            "--shards", "3", "--workers", str(workers)]


def test_build_captions_every_segment_of_every_video(tmp_path):
    videos = make_videos(tmp_path / "videos", 3)
    with ChatServer() as srv:
        report = build_store(videos, tmp_path / "store", "openai", openai_options(srv), num_shards=2,
                             progress=False)
    assert sorted(report.built) == ["clip_00", "clip_01", "clip_02"] and not report.failed
    store = CaptionStore(tmp_path / "store")
    for vid in report.built:
        video = store.video(vid)
        assert video.width == 4 and video.captioner == "openai"
        for ids in tree.all_ids(video.width):
            caption = store.get(vid, ids)
            n = tree.CORPUS_FRAMES[caption.level]
            assert caption.caption.startswith(f"{n} frames from {caption.start}s to {caption.end}s")
    # the subtitle reached exactly the low segments whose sampled frames fall inside it
    with_sub = [ids for ids in tree.all_ids(4) if "hello there" in store.get("clip_00", ids).caption]
    assert with_sub and all(store.get("clip_00", ids).start <= 4.0 for ids in with_sub)


def test_the_offline_captioner_builds_real_footage_with_its_speech(tmp_path):
    """Megamind.avi (real dialogue) through build_store: the store records the captioner, and the
    captions quote what is said where it is said (the build path asks for speech as caption_video does)."""
    source = os.path.join(OPENCV_DATA, "Megamind.avi")
    if not os.path.isfile(source):
        pytest.skip(f"{source} is not installed (Debian package opencv-doc)")
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(source, videos / "megamind.avi")
    report = build_store(videos, tmp_path / "store", "offline", {"ocr": False}, progress=False,
                         frames_per_level={"high": 16, "medium": 8, "low": 4})
    assert report.built == ["megamind"] and not report.failed
    store = CaptionStore(tmp_path / "store")
    assert store.video("megamind").captioner == "offline"
    captions = store.tree_captions("megamind")
    relief = [c for c in captions if c.level == "low" and "relief" in c.caption]
    assert relief and all(c.seg_start < 6.2 and c.seg_end > 4.3 for c in relief)
    assert all(len(c.caption.split()) <= tree.WORD_BUDGET[c.level] for c in captions)


def test_a_rerun_builds_only_new_videos(tmp_path):
    videos = make_videos(tmp_path / "videos", 2)
    with ChatServer() as srv:
        build_store(videos, tmp_path / "store", "openai", openai_options(srv), progress=False)
        encode_ramp(videos / "late.mp4", frames=90)
        before = len(srv.requests)
        report = build_store(videos, tmp_path / "store", "openai", openai_options(srv), progress=False)
        assert report.built == ["late"] and sorted(report.skipped) == ["clip_00", "clip_01"]
        assert len(srv.requests) - before == 4 + 16 + 64
    assert CaptionStore(tmp_path / "store").stats()["videos"] == 3


def test_a_killed_build_loses_no_finished_video_and_resumes(tmp_path):
    videos = make_videos(tmp_path / "videos", 8)
    store = tmp_path / "store"
    with ChatServer(delay=0.03) as srv:
        proc = subprocess.Popen(build_cmd(videos, store, srv), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and len(list((store / "staging").glob("*.parquet"))) < 2:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = {p.stem for p in (store / "staging").glob("*.parquet")}
        assert 2 <= len(finished) < 8
        assert read_manifest(store)["shards"] == {}     # nothing committed yet, and still a valid store
        srv.delay = 0.0
        result = subprocess.run(build_cmd(videos, store, srv), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(finished) and summary["built"] == 8 - len(finished)
    final = CaptionStore(store)
    assert final.video_ids() == sorted(f"clip_{i:02d}" for i in range(8))
    assert not list((store / "staging").glob("*")) and not list((store / "shards").glob(".*tmp"))


def test_a_bad_video_is_reported_and_the_others_are_built(tmp_path):
    videos = make_videos(tmp_path / "videos", 2)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with ChatServer() as srv:
        result = subprocess.run(build_cmd(videos, tmp_path / "store", srv, workers=2), capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("lvr1: error:")]
    assert len(errors) == 1 and "broken.mp4" in errors[0] and "Traceback" not in result.stderr
    assert CaptionStore(tmp_path / "store").video_ids() == ["clip_00", "clip_01"]


def test_an_unreachable_endpoint_stops_the_build_before_it_starts_with_a_message_naming_it(tmp_path):
    videos = make_videos(tmp_path / "videos", 1)
    with ChatServer() as srv:
        endpoint = srv.base_url
    with pytest.raises(InputError, match=f"{endpoint}: unreachable"):
        build_store(videos, tmp_path / "store", "openai", {"endpoint": endpoint, "model": "m", "retries": 1},
                    progress=False)
    assert not (tmp_path / "store").exists()
