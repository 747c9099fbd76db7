"""The main job end to end on a small demo: corpus -> offline captions -> store -> summary; reruns resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.platform.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-cpu.yaml"


def run_pipeline(out, *extra):
    cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "pipeline", "--config", str(DEMO_CONFIG),
           "--set", "corpus.videos=2", "--set", "corpus.minutes=2", "--set", f"output_dir={out}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pipeline_builds_the_demo_store_and_a_rerun_skips_every_stage(tmp_path):
    first = run_pipeline(tmp_path / "run")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["videos"] == 2 and summary["questions"] > 0
    assert sum(summary["captions_per_level"].values()) == CaptionStore(tmp_path / "run" / "store").stats()["captions"]
    assert set(summary["questions_per_split"]) <= {"train", "val", "test"}

    second = run_pipeline(tmp_path / "run")
    assert second.returncode == 0, second.stderr
    assert "already generated" in second.stderr and "built 0, skipped 2" in second.stderr
    assert json.loads(second.stdout)["captions_per_level"] == summary["captions_per_level"]


def test_the_shipped_demo_config_loads_and_overrides_apply():
    config = load_config(DEMO_CONFIG, ["corpus.videos=3", "captions.shards=4"])
    assert config.corpus.videos == 3 and config.captions.shards == 4
    assert config.captions.captioner == "offline"


@pytest.mark.slow
def test_the_store_benchmark_runs_and_prints_its_table():
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_store.py"
    result = subprocess.run([sys.executable, str(bench), "--videos", "12", "--lookups", "2000",
                             "--json-lookups", "50", "--ray-lookups", "100"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| store in-process, cache off |" in result.stdout
    assert "x the per-call JSON approach" in result.stdout
