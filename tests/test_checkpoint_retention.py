"""Which checkpoints retention deletes (the rule; a real DeepSpeed run is in test_learner.py)."""

import pytest

from longvideo_r1.trainer.loop import checkpoints_to_delete, prune_checkpoints

TAGS = [f"step{n:06d}" for n in (4, 8, 12, 16, 20)]


@pytest.mark.parametrize("keep_last, keep_every, deleted", [
    (2, 0, ["step000004", "step000008", "step000012"]),
    (1, 0, ["step000004", "step000008", "step000012", "step000016"]),
    (2, 8, ["step000004", "step000012"]),
    (0, 0, []),                                     # 0 keeps everything
    (10, 0, []),
])
def test_the_newest_and_every_kth_are_kept(keep_last, keep_every, deleted):
    assert checkpoints_to_delete(TAGS, "step000020", keep_last, keep_every) == deleted


def test_latest_and_anything_newer_are_never_deleted():
    # "latest" names step 12 (a resumed run that has not saved again yet): 16 and 20 are not ours to judge
    assert checkpoints_to_delete(TAGS, "step000012", 1, 0) == ["step000004", "step000008"]
    assert checkpoints_to_delete(TAGS, None, 1, 0) == []
    assert checkpoints_to_delete(TAGS + ["global_step3", "hf"], "step000020", 1, 0) == TAGS[:-1]


def test_prune_deletes_only_checkpoint_folders(tmp_path):
    for tag in TAGS + ["notes"]:
        (tmp_path / tag).mkdir()
        (tmp_path / tag / "shard.pt").write_bytes(b"x")
    (tmp_path / "latest").write_text("step000020")
    assert prune_checkpoints(tmp_path, 2) == ["step000004", "step000008", "step000012"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "notes", "step000016", "step000020"]
    assert prune_checkpoints(tmp_path / "missing", 2) == []
