"""The caption tree follows PROTOCOL §1 exactly: width, parts, ids, sampling, time spans."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longvideo_r1.corpus import tree
from longvideo_r1.errors import InputError


@given(st.floats(min_value=1.0, max_value=100_000.0))
def test_width_is_the_clamped_rounded_cube_root_of_leaf_count(duration):
    expected = round((duration / 16) ** (1 / 3))
    expected = 4 if expected < 4 else 8 if expected > 8 else expected
    assert tree.tree_width(duration) == expected


def test_width_examples_cover_the_clamp_and_the_middle():
    assert tree.tree_width(60) == 4            # short videos get the minimum
    assert tree.tree_width(1800) == 5          # (112.5)^(1/3) = 4.83
    assert tree.tree_width(3600) == 6          # (225)^(1/3) = 6.08
    assert tree.tree_width(10 * 3600) == 8     # long videos get the maximum
    assert tree.tree_width(60, min_width=3) == 3  # MLVU's minimum width


@settings(max_examples=60)
@given(st.integers(min_value=4, max_value=8), st.integers(min_value=0, max_value=5000), st.sampled_from(tree.LEVELS))
def test_level_parts_are_array_split_of_all_frames(width, extra, level):
    num_frames = width ** 3 + extra
    parts = tree.level_parts(num_frames, width, level)
    assert len(parts) == width ** tree.LEVEL_DEPTH[level]
    assert np.array_equal(np.concatenate(parts), np.arange(num_frames))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first parts get the extra frames


@given(st.integers(min_value=2, max_value=8), st.data())
def test_flat_index_matches_the_protocol_formula_and_inverts(width, data):
    h, m, l = (data.draw(st.integers(1, width)) for _ in range(3))
    assert tree.flat_index((h,), width) == h - 1
    assert tree.flat_index((h, m), width) == (h - 1) * width + (m - 1)
    assert tree.flat_index((h, m, l), width) == (h - 1) * width ** 2 + (m - 1) * width + (l - 1)
    for ids in [(h,), (h, m), (h, m, l)]:
        assert tree.ids_from_flat(tree.level_of(ids), tree.flat_index(ids, width), width) == ids


def test_all_ids_lists_high_then_medium_then_low_in_flat_order():
    ids = tree.all_ids(4)
    assert len(ids) == 4 + 16 + 64
    assert ids[0] == (1,) and ids[4] == (1, 1) and ids[5] == (1, 2) and ids[20] == (1, 1, 1)
    assert ids[-1] == (4, 4, 4)


@given(st.integers(min_value=1, max_value=500), st.integers(min_value=0, max_value=10_000),
       st.integers(min_value=2, max_value=128))
def test_sampled_frames_are_truncated_linspace_over_the_part(length, first, count):
    part = np.arange(first, first + length)
    ids = tree.sample_frame_ids(part, count)
    assert len(ids) == count
    assert ids[0] == part[0] and ids[-1] == part[-1]
    assert np.array_equal(ids, np.linspace(part[0], part[-1], count).astype(int))
    assert np.all(np.diff(ids) >= 0)


def test_build_segments_records_frame_times_rounded_to_a_tenth():
    fps = 29.97
    segs = tree.build_segments(5000, fps, 4, {"high": 8, "medium": 4, "low": 2})
    assert [s.ids for s in segs] == tree.all_ids(4)
    for s in segs:
        assert list(s.frame_time) == [round(i / fps, 1) for i in s.frame_ids]
        assert s.start == s.frame_time[0] and s.end == s.frame_time[-1]
        assert s.first_frame <= s.frame_ids[0] and s.frame_ids[-1] == s.last_frame
    low = [s for s in segs if s.level == "low"]
    assert low[0].first_frame == 0 and low[-1].last_frame == 4999


@given(st.integers(min_value=4, max_value=8), st.floats(min_value=10, max_value=20_000), st.data())
def test_segment_interval_follows_the_reward_formula(width, duration, data):
    ids = tuple(data.draw(st.integers(1, width)) for _ in range(data.draw(st.integers(1, 3))))
    start, end = tree.segment_interval(ids, width, duration)
    expected = sum((i - 1) * duration / width ** (d + 1) for d, i in enumerate(ids))
    assert start == pytest.approx(expected)
    assert end == pytest.approx(min(duration, expected + duration / width ** len(ids)))


@pytest.mark.parametrize("ids", [(0,), (5,), (1, 2, 3, 4), (), (True, 1), (1.0, 2), ("1",)])
def test_check_ids_rejects_out_of_range_and_non_integer_ids(ids):
    with pytest.raises(InputError, match="segment id"):
        tree.check_ids(ids, 4)


def test_a_video_shorter_than_the_leaf_count_is_a_clear_error():
    with pytest.raises(InputError, match="too short"):
        tree.level_parts(50, 4, "high")
