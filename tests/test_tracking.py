"""MLflow tracking: parent and stage runs in a real SQLite store and behind a real `mlflow server`,
resuming after Ctrl-C, `lvr1 runs compare`, and a disabled tracker that touches nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from longvideo_r1.platform import cli
from longvideo_r1.platform.tracking import (PARAM_VALUE_LIMIT, RECORD_FILE, Tracker, TrackingConfig,
                                            flatten_params, metric_key)


@dataclass
class FakeSFT:
    lr: float = 1e-5
    epochs: int = 2
    target_modules: list = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class FakeConfig:
    name: str = "fake"
    output_dir: str = "unused"
    sft: FakeSFT = field(default_factory=FakeSFT)
    notes: str = "n" * 900                       # longer than any MLflow server takes
    extra: dict = field(default_factory=lambda: {f"k{i:03d}": i for i in range(150)})   # > 100 per batch


def fake_pipeline(tracker: Tracker, out: Path, config=None, interrupt_in: str | None = None,
                  steps: int = 3) -> None:
    """A parent run and two stage runs with per-step metrics and an artifact file."""
    config = config or FakeConfig()
    with tracker.pipeline(params=config, tags={"lvr1.config_file": "fake.yaml"}):
        with tracker.stage("sft", params=config.sft) as s:
            for step in range(steps):
                s.log_metrics({"train/loss": 1.0 / (step + 1), "lr": config.sft.lr}, step=step)
            (out / "sft-metrics.jsonl").write_text('{"loss": 0.33}\n')
            s.log_artifact(out / "sft-metrics.jsonl", "logs")
        with tracker.stage("grpo") as s:
            for step in range(steps):
                if interrupt_in == "grpo" and step == 1:
                    raise KeyboardInterrupt
                s.log_metrics({"reward/mean": 0.1 * step, "kl": 0.01}, step=step)
            s.log_dict({"accuracy": 0.5}, "eval/summary.json")
        tracker.log_metrics({"total_seconds": 12.5})


def client_for(out: Path):
    import mlflow

    record = json.loads((out / RECORD_FILE).read_text())
    return mlflow.MlflowClient(record["tracking_uri"]), record


@pytest.fixture
def no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# --------------------------------------------------------------------------------------------------


def test_keys_and_values_are_valid_for_mlflow():
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    names = ["train/loss", "a:b", "/lead", "trail/", "a//b", "x/./y", "../up", "sp ace", "ünï", "", "é/..",
             "weird key!@#$%^&*()", "q" * 400]
    for name in names:
        key = metric_key(name)
        _validate_metric_name(key)
        _validate_param_name(key)
        assert len(key) <= 250
    assert metric_key("train/loss") == "train/loss"
    assert metric_key("a:b") == "a_b"                        # ':' is refused by Windows servers
    assert metric_key("a//b/") == "a/b" and metric_key("x/./y") == "x/_/y"

    flat = flatten_params(FakeConfig())
    assert flat["sft.lr"] == "1e-05" and flat["sft.epochs"] == "2"
    assert flat["sft.target_modules"] == '["q_proj", "v_proj"]'
    assert flat["extra.k149"] == "149"
    assert len(flat["notes"]) == PARAM_VALUE_LIMIT and flat["notes"].endswith("[cut]")


def test_fake_pipeline_in_the_default_sqlite_store(tmp_path, no_env_uri):
    import mlflow.telemetry

    out = tmp_path / "run"
    tracker = Tracker(TrackingConfig(), out, "fake-run")
    fake_pipeline(tracker, tmp_path)
    assert (out / "mlflow.db").is_file() and (out / "mlartifacts").is_dir()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and mlflow.telemetry.get_telemetry_client() is None

    client, record = client_for(out)
    assert record["tracking_uri"] == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    parent = client.get_run(record["run_id"])
    assert parent.info.run_name == "fake-run" and parent.info.status == "FINISHED"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.tags["lvr1.config_file"] == "fake.yaml"
    p = parent.data.params
    assert p["name"] == "fake" and p["sft.lr"] == "1e-05" and p["sft.target_modules"] == '["q_proj", "v_proj"]'
    assert p["extra.k000"] == "0" and p["extra.k149"] == "149"          # 150+ params: logged in chunks
    assert len(p["notes"]) == PARAM_VALUE_LIMIT
    for package in ("torch", "vllm", "deepspeed", "ray", "transformers", "mlflow", "longvideo_r1"):
        assert p[f"system.version.{package}"]
    assert p["system.version.mlflow"] == __import__("mlflow").__version__
    assert p["system.host.cpus"] == str(os.cpu_count()) and p["system.host.name"]
    assert len(p["system.git.commit"]) == 40 and p["system.git.dirty"] in ("true", "false")
    assert parent.data.metrics["total_seconds"] == 12.5
    assert parent.info.artifact_uri.startswith(str((out / "mlartifacts").resolve()))
    full = json.loads(Path(client.download_artifacts(parent.info.run_id, "config.json", str(tmp_path))).read_text())
    assert full["notes"] == "n" * 900 and full["sft"]["lr"] == 1e-5          # the uncut config

    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["grpo", "sft"]
    assert {c.info.run_id for c in children} == set(record["stages"].values())
    sft = client.get_run(record["stages"]["sft"])
    grpo = client.get_run(record["stages"]["grpo"])
    assert sft.data.tags["mlflow.parentRunId"] == parent.info.run_id == grpo.data.tags["mlflow.parentRunId"]
    assert sft.info.status == grpo.info.status == "FINISHED"
    assert sft.data.params == {"lr": "1e-05", "epochs": "2", "target_modules": '["q_proj", "v_proj"]'}
    history = client.get_metric_history(sft.info.run_id, "train/loss")
    assert [(m.step, round(m.value, 4)) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 1.0), (1, 0.5), (2, 0.3333)]
    assert [m.step for m in client.get_metric_history(grpo.info.run_id, "reward/mean")] == [0, 1, 2]

    artifacts = [a.path for a in client.list_artifacts(sft.info.run_id, "logs")]
    assert artifacts == ["logs/sft-metrics.jsonl"]
    local = client.download_artifacts(sft.info.run_id, "logs/sft-metrics.jsonl", str(tmp_path))
    assert Path(local).read_text() == '{"loss": 0.33}\n'
    summary = client.download_artifacts(grpo.info.run_id, "eval/summary.json", str(tmp_path))
    assert json.loads(Path(summary).read_text()) == {"accuracy": 0.5}


def test_ctrl_c_marks_runs_killed_and_a_rerun_resumes_the_parent_with_fresh_stage_runs(tmp_path, no_env_uri,
                                                                                      capsys):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fake_pipeline(Tracker(TrackingConfig(), out, "resumable"), tmp_path, interrupt_in="grpo")
    client, record = client_for(out)
    parent_id, sft_id, grpo_id = record["run_id"], record["stages"]["sft"], record["stages"]["grpo"]
    assert client.get_run(parent_id).info.status == "KILLED"
    assert client.get_run(grpo_id).info.status == "KILLED"
    assert client.get_run(sft_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(grpo_id, "reward/mean")] == [0]

    # The rerun: the same parent run; a stage that runs again gets a fresh nested run that keeps what
    # is logged to it (never a finished run that drops it), linked to the attempt before it.
    tracker = Tracker(TrackingConfig(), out, "resumable")
    changed = FakeConfig(notes="changed")
    with tracker.pipeline(params=changed) as parent:
        assert parent.run_id == parent_id and parent.resumed
        with tracker.stage("sft", params=changed.sft) as s:
            assert s.run_id != sft_id and not s.resumed
            s.log_metrics({"train/loss": 0.25}, step=3)
            new_sft = s.run_id
        with tracker.stage("grpo") as s:
            assert s.run_id not in (grpo_id, new_sft)
            s.log_metrics({"reward/mean": 0.2}, step=1)
            new_grpo = s.run_id
    client, record = client_for(out)
    assert record["run_id"] == parent_id and record["stages"] == {"sft": new_sft, "grpo": new_grpo}
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["notes"].startswith("nnn")                   # params are immutable …
    assert parent.data.tags["lvr1.param_changed.notes"].endswith("-> changed")   # … the change is a tag
    assert "lvr1.resumed_at" in parent.data.tags
    for old, new in ((sft_id, new_sft), (grpo_id, new_grpo)):
        run = client.get_run(new)
        assert run.info.status == "FINISHED" and run.data.tags["lvr1.previous_run"] == old
        assert run.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(grpo_id).info.status == "KILLED"                 # the first attempt as it ended
    assert [m.step for m in client.get_metric_history(grpo_id, "reward/mean")] == [0]
    assert [m.step for m in client.get_metric_history(new_grpo, "reward/mean")] == [1]
    assert [m.step for m in client.get_metric_history(sft_id, "train/loss")] == [0, 1, 2]
    assert [(m.step, m.value) for m in client.get_metric_history(new_sft, "train/loss")] == [(3, 0.25)]
    assert "param(s) differ" in capsys.readouterr().err

    # An exception marks the stage and the parent FAILED.
    with pytest.raises(ValueError):
        with tracker.pipeline():
            with tracker.stage("sft", params=FakeSFT(lr=3e-4)) as s:
                failing = s.run_id
                raise ValueError("boom")
    client, record = client_for(out)
    assert record["stages"]["sft"] == failing
    assert client.get_run(failing).info.status == "FAILED" and client.get_run(parent_id).info.status == "FAILED"
    assert client.get_run(failing).data.params["lr"] == "0.0003"


def test_a_stage_run_twice_gives_two_nested_runs_holding_their_own_metrics(tmp_path, no_env_uri):
    out = tmp_path / "run"
    for attempt in range(2):                              # two invocations, the stage finishing each time
        tracker = Tracker(TrackingConfig(system_metrics=False), out, "twice")
        with tracker.pipeline():
            with tracker.stage("sft") as s:
                s.log_metrics({"loss": 1.0 + attempt}, step=attempt)
    with tracker.pipeline():                              # and twice within one invocation
        for attempt in (2, 3):
            with tracker.stage("sft") as s:
                tracker.log_metrics({"loss": 1.0 + attempt}, step=attempt)   # the innermost run
    client, record = client_for(out)
    children = client.search_runs([record["experiment_id"]], order_by=["attributes.start_time ASC"],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{record['run_id']}'")
    assert [c.info.run_name for c in children] == ["sft"] * 4
    assert [c.info.status for c in children] == ["FINISHED"] * 4
    assert [c.data.metrics["loss"] for c in children] == [1.0, 2.0, 3.0, 4.0]
    assert [c.data.tags.get("lvr1.previous_run") for c in children] == [None] + [c.info.run_id for c in children[:3]]
    assert record["stages"] == {"sft": children[-1].info.run_id}


def test_many_params_and_metrics_in_one_call_reach_the_run(tmp_path, no_env_uri):
    out = tmp_path / "run"
    tracker = Tracker(TrackingConfig(system_metrics=False), out, "big")
    params = {f"p{i:04d}": i for i in range(1234)}                     # MLflow takes 100 per request
    metrics = {f"m{i:04d}": float(i) for i in range(2500)}             # and 1000 entities per request
    with tracker.pipeline(params=params) as parent:
        parent.log_metrics(metrics, step=7)
    client, record = client_for(out)
    run = client.get_run(record["run_id"])
    assert all(run.data.params[k] == str(v) for k, v in params.items())
    assert run.data.metrics == {**metrics, **{k: v for k, v in run.data.metrics.items() if k.startswith("system/")}}


def test_system_metrics_are_sampled_on_the_parent_run_only(tmp_path, no_env_uri):
    out = tmp_path / "run"
    tracker = Tracker(TrackingConfig(system_metrics_interval=0.2), out, "sampled")
    with tracker.pipeline():
        monitor = tracker.system_monitor
        assert monitor is not None and monitor.sampling_interval == 0.2
        with tracker.stage("work") as s:
            started = time.monotonic()                                      # a little CPU to measure, until
            while time.monotonic() < started + 1 or (monitor._logging_step < 2   # two samples were taken
                                                     and time.monotonic() < started + 60):
                sum(i * i for i in range(20000))
            s.log_metrics({"done": 1})
    assert tracker.system_monitor is None                                   # stopped with the parent
    client, record = client_for(out)
    parent = client.get_run(record["run_id"])
    system = {k for k in parent.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "system/cpu_utilization_percentage")]
    assert steps and steps == list(range(len(steps)))
    stage = client.get_run(record["stages"]["work"])
    assert not any(k.startswith("system/") for k in stage.data.metrics)


def test_disabled_tracker_creates_nothing_and_never_imports_mlflow(tmp_path):
    out = tmp_path / "run"
    script = f"""
import sys
from pathlib import Path
from longvideo_r1.platform.tracking import Tracker, TrackingConfig
t = Tracker(TrackingConfig(enabled=False), {str(out)!r}, "off")
with t.pipeline(params={{"a": {{"b": 1}}}}, tags={{"x": "y"}}) as p:
    with t.stage("sft") as s:
        s.log_metrics({{"loss": 1.0}}, step=1)
        s.log_artifact("/no/such/file")
        t.log_params({{"c": 2}}); t.log_text("hi", "a.txt"); t.set_status("FAILED")
assert "mlflow" not in sys.modules, "mlflow was imported"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_runs_compare_prints_both_runs_side_by_side(tmp_path, no_env_uri, capsys):
    db = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{db}"
    config = TrackingConfig(tracking_uri=uri, experiment="compare-test")
    for name, lr, steps in (("run-a", 1e-5, 3), ("run-b", 3e-4, 5)):
        (tmp_path / name).mkdir()
        fake_pipeline(Tracker(config, tmp_path / name, name), tmp_path / name,
                      FakeConfig(name=name, sft=FakeSFT(lr=lr)), steps=steps)
    assert (tmp_path / "shared" / "mlartifacts").is_dir()   # artifacts beside an explicit sqlite store
    capsys.readouterr()

    rc = cli.main(["runs", "compare", "--uri", uri, "--experiment", "compare-test", "run-a", "run-b",
                   "--metrics", "sft/train/loss,grpo/reward/mean", "--min-max"])
    text = capsys.readouterr().out
    assert rc == 0
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0].split("|")[2].strip() == "run-a" and table[0].split("|")[3].strip() == "run-b"
    assert len({len(line) for line in table}) == 1                       # fixed-width columns
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table}
    assert rows["status"] == ["FINISHED", "FINISHED"]
    assert rows["param sft.lr"] == ["1e-05", "0.0003"] and rows["param name"] == ["run-a", "run-b"]
    assert rows["sft/train/loss"] == ["0.333333", "0.2"]
    assert rows["sft/train/loss (min)"] == ["0.333333", "0.2"] and rows["sft/train/loss (max)"] == ["1", "1"]
    assert rows["grpo/reward/mean"] == ["0.2", "0.4"]

    # --json: the same as one JSON object.
    assert cli.main(["runs", "compare", "--uri", uri, "--experiment", "compare-test", "run-a", "run-b",
                     "--metrics", "sft/train/loss,grpo/reward/mean", "--min-max", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["experiment"] == "compare-test" and data["tracking_uri"] == uri
    assert data["metrics"] == ["sft/train/loss", "grpo/reward/mean"] and "sft.lr" in data["params"]
    a, b = data["runs"]
    assert (a["name"], b["name"]) == ("run-a", "run-b") and a["status"] == b["status"] == "FINISHED"
    assert len(a["run_id"]) == 32 and a["duration_s"] >= 0 and a["start_time"].endswith("+00:00")
    assert a["params"]["sft.lr"] == "1e-05" and b["params"]["sft.lr"] == "0.0003"
    assert round(a["metrics"]["sft/train/loss"], 6) == 0.333333 and b["metrics"]["grpo/reward/mean"] == 0.4
    assert a["min"]["sft/train/loss"] == a["metrics"]["sft/train/loss"] and a["max"]["sft/train/loss"] == 1

    # By default: the latest parent runs, newest first, with every metric; also via --output-dir.
    assert cli.main(["runs", "compare", "--output-dir", str(tmp_path / "run-a")]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "|" in line}
    assert "run-b" in rows["field"] and "run-a" in rows["field"] and "total_seconds" in rows

    def error(argv) -> str:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lvr1: error:"), err
        return err[0]

    assert "run no-such-run" in error(["runs", "compare", "--uri", uri, "--experiment", "compare-test",
                                       "run-a", "no-such-run"])
    with socket.socket() as s:                                      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    assert "unreachable" in error(["runs", "compare", "--uri", f"http://127.0.0.1:{port}"])
    assert time.monotonic() - started < 10
    assert "not found" in error(["runs", "compare", "--uri", uri, "--experiment", "nope"])
    import mlflow

    mlflow.MlflowClient(uri).create_experiment("empty")
    assert "no runs" in error(["runs", "compare", "--uri", uri, "--experiment", "empty"])
    assert "no such database" in error(["runs", "compare", "--uri", f"sqlite:///{tmp_path}/missing.db"])
    assert not (tmp_path / "missing.db").exists()


# --------------------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on a free loopback port, in its own process group (stopped at the end)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mlflow"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}   # no job-runner process (GenAI jobs only)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([*cmd, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/health", timeout=2).text.strip() == "OK":
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.5)
        yield url, tmp_path
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (ours alone), wait for all of it, SIGKILL what lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.slow
def test_mlflow_tracking_uri_points_at_a_real_server(mlflow_server, monkeypatch, capsys):
    url, tmp = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    out = tmp / "run"
    out.mkdir()
    fake_pipeline(Tracker(TrackingConfig(experiment="served"), out, "served-run"), out)
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()

    import mlflow

    record = json.loads((out / RECORD_FILE).read_text())
    assert record["tracking_uri"] == url
    client = mlflow.MlflowClient(url)                                  # the REST client
    assert type(client._tracking_client.store).__name__ == "RestStore"
    parent = client.get_run(record["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["sft.lr"] == "1e-05"
    sft = client.get_run(record["stages"]["sft"])
    assert sft.data.tags["mlflow.parentRunId"] == parent.info.run_id and sft.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(sft.info.run_id, "train/loss")] == [0, 1, 2]
    assert [a.path for a in client.list_artifacts(sft.info.run_id, "logs")] == ["logs/sft-metrics.jsonl"]
    assert sft.info.artifact_uri.startswith("mlflow-artifacts:")       # proxied by the server …
    stored = list((tmp / "server-artifacts").rglob("sft-metrics.jsonl"))
    assert len(stored) == 1 and stored[0].read_text() == '{"loss": 0.33}\n'   # … into its destination

    capsys.readouterr()
    assert cli.main(["runs", "compare", "--metrics", "sft/train/loss", "--experiment", "served"]) == 0
    text = capsys.readouterr().out
    assert url in text and "served-run" in text and "0.333333" in text
