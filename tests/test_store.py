"""The sharded caption store: what is committed is what readers see, and bad input is a clear error."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.captioning import CaptionRecord
from longvideo_r1.corpus.store import CaptionStore, StoreWriter, VideoRecord, shard_of, stage_video
from longvideo_r1.errors import InputError


def make_video(video_id: str, num_frames: int = 2000, fps: float = 2.0):
    """A video record and captions whose text names the segment, built with the real tree math."""
    width = tree.tree_width(num_frames / fps)
    video = VideoRecord(video_id, width, num_frames / fps, fps, num_frames, f"/videos/{video_id}.mp4")
    records = [CaptionRecord(video_id, s.level, s.ids, f"{video_id} {s.level} {s.ids}", s.frame_time,
                             s.frame_ids, s.first_frame / fps, (s.last_frame + 1) / fps)
               for s in tree.build_segments(num_frames, fps, width, {"high": 4, "medium": 3, "low": 2})]
    return video, records


def build(root, videos, shards=4):
    writer = StoreWriter(root, shards)
    with writer.locked():
        for video, records in videos:
            stage_video(root, video, records)
        writer.commit()
    return writer


@pytest.fixture
def store_dir(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video(f"vid_{i}", 1500 + 700 * i) for i in range(5)])
    return root


def test_every_committed_caption_comes_back_with_its_frame_time_span(store_dir):
    store = CaptionStore(store_dir)
    for i in range(5):
        video, records = make_video(f"vid_{i}", 1500 + 700 * i)
        assert store.video(video.video_id).width == video.width
        for record in records:
            got = store.get(video.video_id, record.ids)
            assert got.caption == record.caption
            assert got.level == record.level
            assert (got.start, got.end) == (record.frame_time[0], record.frame_time[-1])
            assert (got.seg_start, got.seg_end) == (record.seg_start, record.seg_end)


def test_widths_differ_per_video(store_dir):
    widths = {CaptionStore(store_dir).video(f"vid_{i}").width for i in range(5)}
    assert len(widths) > 1


def test_shard_assignment_is_stable_across_processes():
    code = "from longvideo_r1.corpus.store import shard_of; print([shard_of(f'v{i}', 16) for i in range(50)])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1
    assert json.loads(outs.pop()) == [shard_of(f"v{i}", 16) for i in range(50)]
    assert len({shard_of(f"v{i}", 16) for i in range(200)}) == 16


def test_each_shard_file_holds_only_its_videos(store_dir):
    manifest = json.loads((store_dir / "manifest.json").read_text())
    for key, entry in manifest["shards"].items():
        ids = set(pq.read_table(store_dir / entry["captions"]).column("video_id").to_pylist())
        assert ids and all(shard_of(v, 4) == int(key) for v in ids)


def test_staged_videos_are_invisible_until_commit(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("a")])
    writer = StoreWriter(root)
    with writer.locked():
        stage_video(root, *make_video("b"))
        assert writer.finished_video_ids() == {"a", "b"}
        with pytest.raises(InputError, match="not in caption store"):
            CaptionStore(root).video("b")
        writer.commit()
    assert CaptionStore(root).get("b", (1,)).caption.startswith("b high")


def test_a_crash_before_the_manifest_swap_leaves_readers_on_the_old_generation(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("a")], shards=1)
    before = (root / "manifest.json").read_text()
    # What a writer killed mid-commit leaves behind: a staged video, a half-written tmp file
    # and a new-generation shard file that the manifest never pointed to.
    stage_video(root, *make_video("b"))
    (root / "shards" / ".captions-000.g9.parquet.123.tmp").write_bytes(b"PAR1 half written")
    (root / "shards" / "captions-000.g9.parquet").write_bytes(b"garbage")
    assert (root / "manifest.json").read_text() == before
    assert CaptionStore(root).get("a", (1, 1)).caption.startswith("a medium")
    writer = StoreWriter(root)
    with writer.locked():
        assert writer.commit() == 1
    store = CaptionStore(root)
    assert store.get("b", (1, 1, 1)).caption.startswith("b low")
    assert sorted(p.name for p in (root / "shards").iterdir()) == ["captions-000.g2.parquet",
                                                                     "videos-000.g2.parquet"]


def test_recommitting_a_video_replaces_it_instead_of_duplicating(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("a"), make_video("b")], shards=1)
    video, records = make_video("a")
    records = [CaptionRecord(**{**r.__dict__, "caption": "new " + r.caption}) for r in records]
    build(root, [(video, records)], shards=1)
    store = CaptionStore(root)
    assert store.get("a", (2,)).caption.startswith("new a")
    assert store.stats()["videos"] == 2


def test_a_reader_opened_before_a_commit_follows_the_new_generation(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("a")], shards=1)
    reader = CaptionStore(root)
    build(root, [make_video("b")], shards=1)
    assert reader.get("a", (1,)).caption.startswith("a high")


def test_stats_count_captions_per_level_and_shard(store_dir):
    stats = CaptionStore(store_dir).stats()
    widths = [CaptionStore(store_dir).video(f"vid_{i}").width for i in range(5)]
    assert stats["videos"] == 5
    assert stats["per_level"] == {lv: sum(w ** tree.LEVEL_DEPTH[lv] for w in widths) for lv in tree.LEVELS}
    assert sum(s["captions"] for s in stats["per_shard"].values()) == stats["captions"]
    assert stats["bytes_on_disk"] > 0


def test_lru_cache_is_bounded_and_counts_hits(store_dir):
    store = CaptionStore(store_dir, cache_size=3)
    for l in (1, 2, 3, 4, 1):
        store.get("vid_0", (1, 1, l))
    store.get("vid_0", (1, 1, 1))
    assert len(store._cache) == 3
    assert store.hits == 1 and store.misses == 5


@pytest.mark.parametrize("video_id, ids, message", [
    ("nope", (1,), "not in caption store"),
    ("vid_0", (9,), "ids run from 1 to"),
    ("vid_0", (1, 2, 3, 4), "1 to 3 integers"),
    ("../etc/passwd", (1,), "not allowed"),
    ("a/b", (1,), "not allowed"),
    ("bad\x00id", (1,), "not allowed"),
])
def test_bad_lookups_are_input_errors_naming_the_input(store_dir, video_id, ids, message):
    with pytest.raises(InputError, match=message):
        CaptionStore(store_dir).get(video_id, ids)


def test_a_truncated_shard_is_a_clear_error_naming_the_file(store_dir):
    manifest = json.loads((store_dir / "manifest.json").read_text())
    key, entry = sorted(manifest["shards"].items())[0]
    path = store_dir / entry["captions"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    video_id = pq.read_table(store_dir / entry["videos"]).column("video_id")[0].as_py()
    with pytest.raises(InputError, match=f"shard {key}.*corrupt"):
        CaptionStore(store_dir).get(video_id, (1,))


def test_a_folder_without_manifest_is_not_a_store(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        CaptionStore(tmp_path)


def test_a_second_writer_is_refused_while_one_holds_the_store(tmp_path):
    root = tmp_path / "store"
    first = StoreWriter(root, 2)
    with first.locked():
        with pytest.raises(InputError, match="being written by another process"):
            with StoreWriter(root).locked():
                pass


def test_staging_rejects_captions_that_are_not_a_full_tree(tmp_path):
    root = tmp_path / "store"
    StoreWriter(root, 1)
    video, records = make_video("a")
    with pytest.raises(InputError, match="do not form a width"):
        stage_video(root, video, records[:-1])


def test_shard_count_of_an_existing_store_cannot_change(store_dir):
    with pytest.raises(InputError, match="cannot change"):
        StoreWriter(store_dir, 7)
