"""Importing and exporting the reference one-JSON-per-video caption format (PROTOCOL §1)."""

import json
import re

import pytest

from longvideo_r1.corpus import tree
from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.corpus.upstream import export_upstream, import_upstream, parse_upstream
from longvideo_r1.errors import InputError


def reference_json(video_id: str, num_frames: int, fps: float, four_levels: bool = False) -> dict:
    """A caption file laid out the way the reference captioning script writes it."""
    width = tree.tree_width(num_frames / fps)
    levels = []
    for level in tree.LEVELS:
        entries = []
        for i, part in enumerate(tree.level_parts(num_frames, width, level)):
            ids = tree.sample_frame_ids(part, tree.ONLINE_FRAMES[level])
            entries.append({"segment_id": i + 1, "level": level,
                            "caption": f"<caption> {level} part {i + 1} of {video_id} </caption>",
                            "frame_time": tree.frame_times(ids, fps), "frame_ids": [int(x) for x in ids]})
        levels.append(entries)
    if four_levels:
        levels.insert(0, [{"segment_id": 1, "level": "top", "caption": "whole video", "frame_time": [0.0],
                           "frame_ids": [0]}])
    return {"video_name": video_id, "width": width, "captions": levels}


def write(folder, video_id, data):
    folder.mkdir(exist_ok=True)
    (folder / f"{video_id}.json").write_text(json.dumps(data))


def test_import_recovers_fps_frames_and_strips_caption_tags(tmp_path):
    data = reference_json("cg_001", 54_000, 30.0)   # 30 minutes at 30 fps -> width 5
    video, records = parse_upstream_from(tmp_path, "cg_001", data)
    assert video.width == 5 and video.num_frames == 54_000
    assert video.fps == pytest.approx(30.0, rel=1e-4)
    assert records[0].caption == "high part 1 of cg_001"
    assert [r.ids for r in records] == tree.all_ids(5)


def parse_upstream_from(tmp_path, video_id, data):
    write(tmp_path / "json", video_id, data)
    return parse_upstream(tmp_path / "json" / f"{video_id}.json")


def test_four_level_files_skip_their_first_level(tmp_path):
    video, records = parse_upstream_from(tmp_path, "old", reference_json("old", 20_000, 25.0, four_levels=True))
    assert records[0].level == "high" and records[0].caption == "high part 1 of old"
    assert len(records) == video.width + video.width ** 2 + video.width ** 3


def test_imported_store_serves_captions_with_first_and_last_frame_times(tmp_path):
    data = reference_json("cg_002", 40_000, 24.0)
    write(tmp_path / "json", "cg_002", data)
    report = import_upstream(tmp_path / "json", tmp_path / "store", num_shards=2)
    assert report["imported"] == ["cg_002"]
    store = CaptionStore(tmp_path / "store")
    low = data["captions"][2][7]
    got = store.get("cg_002", tree.ids_from_flat("low", 7, data["width"]))
    assert got.caption == "low part 8 of cg_002"
    assert (got.start, got.end) == (low["frame_time"][0], low["frame_time"][-1])


def test_export_round_trips_the_reference_format_without_tags(tmp_path):
    data = reference_json("cg_003", 30_000, 29.97)
    write(tmp_path / "json", "cg_003", data)
    import_upstream(tmp_path / "json", tmp_path / "store")
    out = export_upstream(CaptionStore(tmp_path / "store"), "cg_003")
    for level_in, level_out in zip(data["captions"], out["captions"]):
        for a, b in zip(level_in, level_out):
            assert b["caption"] == a["caption"].removeprefix("<caption>").removesuffix("</caption>").strip()
            assert (b["frame_time"], b["frame_ids"], b["segment_id"]) == (a["frame_time"], a["frame_ids"],
                                                                          a["segment_id"])
    assert out["width"] == data["width"]


def test_rerunning_an_import_skips_videos_already_in_the_store(tmp_path):
    write(tmp_path / "json", "cg_004", reference_json("cg_004", 20_000, 25.0))
    import_upstream(tmp_path / "json", tmp_path / "store")
    again = import_upstream(tmp_path / "json", tmp_path / "store")
    assert again["imported"] == [] and again["skipped"] == ["cg_004"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: "{not json", "not readable JSON"),
    (lambda d: {**d, "captions": d["captions"][:2]}, "3 \\(or 4\\)"),
    (lambda d: {**d, "width": 3}, "expected 27 for width 3|has 4 captions, expected 3"),
    (lambda d: {**d, "captions": [d["captions"][0], d["captions"][1][:-1], d["captions"][2]]}, "medium level has"),
    (lambda d: {**d, "captions": [[{**e, "frame_ids": ["x"]} for e in d["captions"][0]]] + d["captions"][1:]},
     "frame_ids"),
])
def test_malformed_files_fail_alone_with_a_message_naming_them(tmp_path, mutate, message):
    good = reference_json("good", 20_000, 25.0)
    bad = mutate(reference_json("bad", 20_000, 25.0))
    write(tmp_path / "json", "good", good)
    folder = tmp_path / "json"
    (folder / "bad.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
    report = import_upstream(folder, tmp_path / "store")
    assert report["imported"] == ["good"]
    assert "bad.json" in report["failed"]["bad.json"]
    assert re.search(message, report["failed"]["bad.json"])


def test_an_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "json").mkdir()
    with pytest.raises(InputError, match="no .json files"):
        import_upstream(tmp_path / "json", tmp_path / "store")
