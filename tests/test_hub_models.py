"""``model:`` as a model hub id: resolved from the local Hugging Face cache, never downloaded in tests."""

import json

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.platform.config import load_config
from longvideo_r1.platform.pipeline import resolve_model


def _cache_a_snapshot(cache, repo_id: str, revision: str = "0" * 40):
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/...}."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    return snapshot


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = _cache_a_snapshot(cache, "SomeOrg/Tiny-Model")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(None, ["model=SomeOrg/Tiny-Model"])
    assert resolve_model(config).resolve() == snapshot.resolve()


def test_a_hub_id_missing_from_the_cache_offline_names_the_model_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        resolve_model(load_config(None, ["model=SomeOrg/Not-Cached"]))
    message = str(err.value)
    assert "SomeOrg/Not-Cached" in message and "HF_HUB_OFFLINE" in message and str(tmp_path / "empty") in message


def test_a_local_folder_wins_and_a_bad_name_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "Org" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model(load_config(None, ["model=Org/model"])) == folder.relative_to(tmp_path)
    with pytest.raises(InputError, match="neither a prepared model name"):
        resolve_model(load_config(None, [f"model={tmp_path / 'nowhere' / 'deep' / 'x'}"]))
