"""The main job end to end on a small demo: corpus → captions → SFT data → SFT → RL → eval; reruns resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longvideo_r1.corpus.store import CaptionStore
from longvideo_r1.platform.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo-cpu.yaml"


SMALL = ["corpus.videos=2", "corpus.minutes=2", "sft.epochs=1", "rl.steps=2", "rl.questions_per_step=2",
         "rl.rollout.n=2", "rl.rollout.max_rounds=3", "rl.rollout.max_turn_tokens=24", "rl.val_every=2",
         "rl.val_questions=2", "rl.save_every=1", "eval.max_rounds=3", "eval.baselines=[random]",
         "rl.rollout.engine_options={max_model_len: 8192}",
         "rl.dynamic_sampling=false"]     # a 1-epoch model scores 0 everywhere: DAPO would skip every update


def run_pipeline(out, *extra, small=True):
    sets = [a for kv in (SMALL if small else []) + [f"output_dir={out}", *extra] for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "pipeline", "--config", str(DEMO_CONFIG), *sets]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_the_demo_pipeline_runs_every_stage_and_a_rerun_skips_them(tmp_path):
    import mlflow

    out = tmp_path / "run"
    first = run_pipeline(out)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["videos"] == 2 and summary["questions"] > 0
    assert sum(summary["captions_per_level"].values()) == CaptionStore(out / "store").stats()["captions"]
    assert set(summary["questions_per_split"]) <= {"train", "val", "test"}
    for stage in ("corpus", "captions", "model", "sft_data", "sft", "rl_data", "rl", "eval"):
        assert stage in summary["stage_seconds"], stage
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    assert (out / "rl" / "model" / "model.safetensors").is_file()
    assert summary["rl"]["steps"] == 2 and summary["rl"]["reward_first"] is not None
    labels = set(summary["eval"]["metrics"])
    assert {"base", "sft", "sft+grpo", "random"} <= labels
    assert (out / "eval" / "report.md").is_file()
    # MLflow: one parent run, a finished nested run per stage, per-step RL metrics
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("longvideo-r1").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {"sft", "rl", "eval"} <= set(children) and all(r.info.status == "FINISHED" for r in children.values())
    assert len(client.get_metric_history(children["rl"].info.run_id, "rollout/reward_mean")) == 2
    assert client.get_metric_history(children["sft"].info.run_id, "train/loss")

    # the benchmark runner reads the RL step phases of this run into a results file
    results = tmp_path / "RESULTS.md"
    bench = subprocess.run([sys.executable, str(DEMO_CONFIG.parents[1] / "bench" / "run_all.py"), "--only", "rl_step",
                            "--run", str(out), "--out", str(results)], capture_output=True, text=True, timeout=60)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert "| update |" in results.read_text() and "2 RL steps" in results.read_text()

    second = run_pipeline(out)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["captions_per_level"] == summary["captions_per_level"]
    assert again["rl"]["reward_last"] == summary["rl"]["reward_last"]
    for stage in ("corpus", "captions", "sft_data", "sft", "rl_data", "rl", "eval"):      # skipped, not redone
        assert f"{stage}: up to date" in second.stderr and stage not in again["stage_seconds"], stage
    assert again["eval"]["metrics"] == summary["eval"]["metrics"]

    # a changed round limit rebuilds the RL rows and everything after them; more RL steps continue RL
    third = run_pipeline(out, "rl.rollout.max_rounds=2", "eval.enabled=false")
    assert third.returncode == 0, third.stderr[-3000:]
    redone = json.loads((out / "summary.json").read_text())
    assert {"rl_data", "rl"} <= set(redone["stage_seconds"]) and "sft" not in redone["stage_seconds"]
    fourth = run_pipeline(out, "rl.rollout.max_rounds=2", "eval.enabled=false", "rl.steps=3")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert "rl: continuing from step 2 to 3" in fourth.stderr
    steps = [json.loads(line)["step"] for line in (out / "rl" / "history.jsonl").read_text().splitlines()]
    assert [s for s in steps if s >= 0] == [0, 1, 2]       # (-1: validation before training, if any)
    runs = client.search_runs([client.get_experiment_by_name("longvideo-r1").experiment_id])
    rl_runs = [r for r in runs if r.info.run_name == "rl"]
    assert len(rl_runs) == 3 and all(client.get_metric_history(r.info.run_id, "rollout/reward_mean")
                                     for r in rl_runs)   # every RL run that really ran kept its metrics


def test_the_shipped_demo_config_loads_and_overrides_apply():
    config = load_config(DEMO_CONFIG, ["corpus.videos=3", "captions.shards=4"])
    assert config.corpus.videos == 3 and config.captions.shards == 4
    assert config.captions.captioner == "demo"


@pytest.mark.slow
def test_the_store_benchmark_runs_and_prints_its_table():
    bench = Path(__file__).resolve().parents[1] / "bench" / "bench_store.py"
    result = subprocess.run([sys.executable, str(bench), "--videos", "12", "--lookups", "2000",
                             "--json-lookups", "50", "--ray-lookups", "100"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| store in-process, cache off |" in result.stdout
    assert "x the per-call JSON approach" in result.stdout


@pytest.mark.parametrize("name, nodes", [
    ("demo-cpu.yaml", [{"CPU": 2.0}]),
    ("demo-learning.yaml", [{"CPU": 2.0}]),
    ("smollm2-cpu.yaml", [{"CPU": 2.0}]),
    # Ray sees every GPU of the nodes (the policy and the video_qa servers are Ray roles); 88 CPUs: the
    # RayJob's pods (tests/test_cluster_files.py checks the cluster files themselves)
    ("qwen3-8b-1node-8gpu.yaml", [{"CPU": 88.0, "GPU": 8.0}]),
    ("qwen3-8b-2node-16gpu.yaml", [{"CPU": 88.0, "GPU": 8.0}] * 2),
])
def test_every_shipped_config_loads_and_its_placement_fits_its_cluster(name, nodes):
    from longvideo_r1.cluster.resources import plan

    config = load_config(DEMO_CONFIG.parent / name)
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    p = plan(config.placement, totals, nodes)
    assert p.slots["learner"] and p.slots["rollout"]
    if "GPU" in nodes[0]:
        r = config.rl.rollout
        assert config.sft.learner.zero_stage == 3 and r.n == 16 and config.rl.questions_per_step == 12
        assert config.rl.learner.lr == 1e-6 and config.rl.learner.kl_coef == 1e-4 and config.rl.learner.kl_kind == "k3"
        assert r.max_rounds == 15 and r.max_response_tokens == 12288 and r.max_observation_tokens == 8192
        assert config.eval.max_rounds == 30
        with pytest.raises(Exception, match="GPU"):      # a cluster too small is named, not waited on
            plan(config.placement, {"CPU": 96.0, "GPU": 4.0}, [{"CPU": 96.0, "GPU": 4.0}])


@pytest.mark.slow
def test_ctrl_c_during_sft_checkpoints_marks_the_run_killed_and_a_rerun_continues(tmp_path):
    import signal
    import time

    import mlflow

    out = tmp_path / "run"
    # enough steps that the interrupt lands mid-run even on a loaded machine (the fitted model's SFT
    # of 3 epochs here took a few seconds and once finished before SIGINT arrived)
    sets = [a for kv in SMALL + [f"output_dir={out}", "sft.batch_tokens=3000", "sft.epochs=12"] for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "train", "sft", "--config", str(DEMO_CONFIG), *sets]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    history = out / "sft" / "history.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and history.read_text().count("\n") >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert (out / "sft" / "checkpoints" / "latest").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("longvideo-r1").experiment_id])
    status = {r.info.run_name: r.info.status for r in runs if "mlflow.parentRunId" in r.data.tags}
    parent = [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert status["sft"] == "KILLED" and parent == ["KILLED"]
    done_before = [json.loads(line)["step"] for line in history.read_text().splitlines()]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in history.read_text().splitlines()]
    # the step in flight at Ctrl-C is finished by the learner and not redone (its figures are lost)
    assert steps[: len(done_before)] == done_before and steps == sorted(set(steps))
    summary = json.loads((out / "sft" / "summary.json").read_text())
    assert steps[-1] == summary["steps"]
    assert (out / "sft" / "model" / "model.safetensors").is_file()
