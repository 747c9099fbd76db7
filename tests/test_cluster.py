"""The cluster room: placement planning (pure), placement groups on a real local Ray, job submission
to a real token-protected Ray head on 127.0.0.1 (started and stopped by this module only), and the
shipped cluster definitions."""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from longvideo_r1.cluster.resources import (JOB_ROLES, SERVED_ROLES, PlacementConfig, RoleResources, create, fit_nodes,
                                             plan, plan_on_nodes)
from longvideo_r1.errors import InputError

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


TWO_NODES_8_GPUS = ({"CPU": 96.0, "GPU": 8.0}, {"CPU": 96.0, "GPU": 8.0})


def two_node_placement() -> PlacementConfig:
    """A placement for 2 nodes × 8 GPUs that exercises every planner feature: 12 hybrid-engine GPUs
    (a vLLM engine and a DeepSpeed rank colocated on each) and 2 tensor-parallel (TP 2) replicas of a
    served model, each of which must sit whole on one node (one bundle of 2 GPUs). (The shipped recipes are the YAML files,
    tested in test_pipeline.py.)"""
    return PlacementConfig(strategy="PACK", colocate=[["rollout", "learner"]],
                           rollout=RoleResources(12, 4.0, 1.0), learner=RoleResources(12, 4.0, 1.0),
                           reference=RoleResources(0, 0.0, 0.0), critic=RoleResources(0, 0.0, 0.0),
                           reward=RoleResources(2, 1.0, 0.0), caption_store=RoleResources(2, 2.0, 0.0),
                           video_qa=RoleResources(2, 4.0, 1.0, tensor_parallel_size=2))


def cfg(**roles) -> PlacementConfig:
    """A placement with every role off except those given as (count, cpus, gpus[, tp])."""
    kwargs = {name: RoleResources(0, 0.0, 0.0) for name in
              ("rollout", "learner", "reference", "critic", "reward", "caption_store", "video_qa", "captioner")}
    colocate = roles.pop("colocate", [])
    strategy = roles.pop("strategy", "PACK")
    kwargs.update({name: RoleResources(*spec) for name, spec in roles.items()})
    return PlacementConfig(strategy=strategy, colocate=colocate, **kwargs)


# ----------------------------------------------------------------------------------- planning (pure)


def test_defaults_fit_the_two_cpu_demo_machine():
    p = plan(PlacementConfig(), {"CPU": 2.0})
    assert p.totals == {"GPU": 0.0, "CPU": 1.6}
    assert [g.name for g in p.groups] == ["rollout", "learner", "reward"]
    assert all(g.strategy == "PACK" for g in p.groups)
    assert p.slots["reference"] == [] and p.slots["video_qa"] == [] and p.slots["caption_store"] == []
    assert p.slots["learner"][0].num_cpus == 0.5


def test_yaml_maps_onto_the_dataclasses():
    from longvideo_r1.platform.config import _build   # the same mapping `load_config` uses

    placement = _build(PlacementConfig, yaml.safe_load("""
        strategy: SPREAD
        colocate: [[learner, reference, critic]]
        learner: {count: 2, num_cpus: 1, num_gpus: 0}
        video_qa: {count: 1, num_cpus: 2, num_gpus: 1, tensor_parallel_size: 2}
    """))
    assert placement.learner == RoleResources(2, 1.0, 0.0)
    assert placement.video_qa.tensor_parallel_size == 2
    assert placement.rollout == RoleResources(1, 1.0, 0.0)          # untouched roles keep their defaults
    p = plan(placement, {"CPU": 8, "GPU": 2}, roles=JOB_ROLES + SERVED_ROLES)
    assert [g.name for g in p.groups] == ["learner", "rollout", "reward", "video_qa"]
    assert p.groups[-1].bundles == [{"CPU": 4.0, "GPU": 2.0}]       # one replica: TP 2 × the ask, one bundle


def test_only_the_roles_a_run_starts_are_reserved():
    """The job reserves what it starts (rollout, learner, reward); a served role reserves its own bundles
    when it starts; the caption store (its actors are pinned to the nodes holding the files) and the
    in-learner roles get no bundles."""
    placement = cfg(rollout=(1, 1.0, 0.0), learner=(1, 0.5, 0.0), reward=(1, 0.1, 0.0),
                    caption_store=(1, 0.25, 0.0), video_qa=(1, 0.5, 0.0))
    job = plan(placement, {"CPU": 2.0})
    assert [g.name for g in job.groups] == ["rollout", "learner", "reward"] and job.slots["video_qa"] == []
    served = plan(placement, {"CPU": 2.0}, roles=("video_qa",))
    assert [g.name for g in served.groups] == ["video_qa"] and len(served.slots["video_qa"]) == 1
    assert served.slots["rollout"] == []
    whole = plan_on_nodes(placement, [{"CPU": 4.0}])             # does the run fit: the job and its servers
    assert [g.name for g in whole.groups] == ["rollout", "learner", "reward", "video_qa"]
    assert whole.totals["CPU"] == 2.1                            # 1 + 0.5 + 0.1 + 0.5: no caption_store bundle


def test_a_served_replica_is_one_bundle_holding_all_its_tensor_parallel_gpus():
    p = plan(cfg(video_qa=(2, 4.0, 1.0, 2)), {"CPU": 16, "GPU": 4}, roles=SERVED_ROLES)
    (group,) = p.groups
    assert group.name == "video_qa" and group.bundles == [{"CPU": 8.0, "GPU": 2.0}] * 2
    first, second = p.slots["video_qa"]
    assert (first.bundle, second.bundle) == (0, 1)
    assert first.num_gpus == 2.0 and first.num_cpus == 8.0 and not first.capture_child_tasks


def test_colocated_roles_share_bundles_in_proportion_to_what_they_ask():
    placement = cfg(rollout=(4, 2.0, 1.0), learner=(4, 6.0, 1.0), colocate=[["rollout", "learner"]])
    p = plan(placement, {"CPU": 32, "GPU": 4})
    (group,) = p.groups
    assert group.name == "rollout+learner" and group.bundles == [{"CPU": 6.0, "GPU": 1.0}] * 4
    assert p.totals == {"GPU": 4.0, "CPU": 24.0}
    rollout, learner = p.slots["rollout"], p.slots["learner"]
    where = [(s.group, s.bundle) for s in rollout]
    assert where == [(s.group, s.bundle) for s in learner] == [(0, i) for i in range(4)]
    assert (rollout[0].num_gpus, learner[0].num_gpus) == (0.5, 0.5)
    assert (rollout[0].num_cpus, learner[0].num_cpus) == (1.5, 4.5)      # 6 CPUs split 2:6
    assert rollout[0].num_cpus + learner[0].num_cpus <= group.bundles[0]["CPU"]


def test_tensor_parallel_replicas_get_strict_pack_groups_of_their_own():
    p = plan(cfg(rollout=(2, 4.0, 1.0, 2)), {"CPU": 16, "GPU": 4})
    assert [(g.name, g.strategy, len(g.bundles)) for g in p.groups] == [("rollout/0", "STRICT_PACK", 2),
                                                                       ("rollout/1", "STRICT_PACK", 2)]
    first, second = p.slots["rollout"]
    assert (first.group, first.bundle, second.group, second.bundle) == (0, 0, 1, 0)
    assert first.capture_child_tasks and first.num_gpus == 0 and first.worker_gpus == 1.0


def test_single_bundle_ranks_colocated_with_tensor_parallel_engines_follow_their_bundles():
    p = plan(cfg(rollout=(2, 1.0, 1.0, 2), learner=(4, 1.0, 1.0), colocate=[["rollout", "learner"]]))
    assert [g.name for g in p.groups] == ["rollout+learner/0", "rollout+learner/1"]
    assert [(s.group, s.bundle) for s in p.slots["learner"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s.worker_gpus for s in p.slots["rollout"]] == [0.5, 0.5]


def test_a_two_node_plan_fits_eight_gpus_per_node_with_each_tp_group_on_one_node():
    p = plan_on_nodes(two_node_placement(), TWO_NODES_8_GPUS)
    assert p.totals["GPU"] == 16
    assert len(p.layout) == len(p.node_load) == 2
    assert all(load["GPU"] <= node["GPU"] and load["CPU"] <= node["CPU"]
               for load, node in zip(p.node_load, TWO_NODES_8_GPUS))
    assert sum(load["GPU"] for load in p.node_load) == 16
    placed = [piece for pieces in p.layout for piece in pieces]
    assert sorted(x for x in placed if x.startswith("video_qa")) == ["video_qa[0]", "video_qa[1]"]  # whole replicas
    assert sum(x.startswith("rollout+learner[") for x in placed) == 12
    assert len(p.slots["rollout"]) == len(p.slots["learner"]) == 12
    assert p.slots["rollout"][0].num_gpus == p.slots["learner"][0].num_gpus == 0.5


def test_not_enough_gpus_names_roles_numbers_and_remedies():
    with pytest.raises(InputError) as err:
        plan(two_node_placement(), {"CPU": 192, "GPU": 8}, roles=JOB_ROLES + SERVED_ROLES)
    message = str(err.value)
    assert "16 GPU" in message and "has 8" in message
    assert "rollout+learner" in message and "video_qa 2 × TP 2 × 1 GPU" in message
    assert "count" in message and "tensor_parallel_size" in message and "colocate" in message
    assert "\n" not in message


def test_not_enough_cpus_on_the_demo_machine():
    with pytest.raises(InputError, match=r"3\.6 CPU in all but the cluster has 2: rollout 3 × 1 CPU"):
        plan(PlacementConfig(rollout=RoleResources(3, 1.0, 0.0)), {"CPU": 2.0})


def test_a_tensor_parallel_group_larger_than_any_node():
    placement = cfg(rollout=(1, 1.0, 1.0, 8), video_qa=(1, 1.0, 1.0, 8))
    for roles in (JOB_ROLES, SERVED_ROLES):
        with pytest.raises(InputError, match="needs 8 GPU, 8 CPU on one node but the largest node has 4 GPU"):
            plan(placement, {"CPU": 64, "GPU": 16}, nodes=[{"CPU": 16, "GPU": 4}] * 4, roles=roles)


def test_fragmentation_is_caught_although_the_totals_fit():
    placement = cfg(rollout=(3, 1.0, 1.0, 2))
    p = plan(placement, {"CPU": 32, "GPU": 6})                    # 6 GPUs asked, 6 in the cluster
    with pytest.raises(InputError, match=r"rollout/2 \(a tensor-parallel group of 2 bundles\).*"
                                         r"left: node 0: 1 GPU.*node 1: 1 GPU"):
        fit_nodes(p, [{"CPU": 16, "GPU": 3}] * 2)


def test_strict_spread_needs_a_node_per_bundle():
    p = plan(cfg(reward=(3, 1.0, 0.0), strategy="STRICT_SPREAD"))
    assert len(fit_nodes(p, [{"CPU": 4}] * 3)) == 3
    with pytest.raises(InputError, match="STRICT_SPREAD puts each bundle"):
        fit_nodes(p, [{"CPU": 8}] * 2)


@pytest.mark.parametrize("placement, message", [
    (PlacementConfig(strategy="BEST"), "placement.strategy 'BEST'"),
    (PlacementConfig(colocate=[["learner", "ref"]]), "unknown role 'ref'"),
    (PlacementConfig(colocate=[["learner"], ["learner", "critic"]]), "learner is in group 0 and group 1"),
    (PlacementConfig(colocate=["learner"]), r"colocate\[0\]='learner'"),
    (PlacementConfig(rollout=RoleResources(-1, 1.0, 0.0)), "rollout.count=-1"),
    (PlacementConfig(rollout=RoleResources(1, 1.0, 1.5)), "num_gpus=1.5"),
    (PlacementConfig(reward=RoleResources(2, 0.0, 0.0)), "placement.reward: 2 actors that ask for no CPU"),
    (cfg(rollout=(1, 1.0, 1.0, 4), video_qa=(1, 1.0, 1.0, 2), colocate=[["rollout", "video_qa"]]),
     "colocated roles must use 4 or 1"),
    (cfg(rollout=(1, 1.0, 1.0), video_qa=(1, 1.0, 1.0), colocate=[["rollout", "video_qa"]]),
     r"video_qa is a served role, whose servers reserve bundles of their own"),
    (cfg(reference=(1, 1.0, 1.0)), r"placement.reference.count=1: the platform runs no separate reference actors"),
    (cfg(video_qa=(1, 0.75, 1.0, 2)), r"placement.video_qa: a replica takes tensor_parallel_size × num_cpus = 1.5"),
])
def test_bad_placements_are_named(placement, message):
    with pytest.raises(InputError, match=message):
        plan(placement)


# ----------------------------------------------------------------------------------- placement groups (local Ray)


def test_create_places_actors_in_their_bundles(ray_local):
    import ray

    p = plan(PlacementConfig(), ray.cluster_resources())
    with create(p, timeout_s=60) as groups:
        @ray.remote
        class Probe:
            def where(self):
                pg = ray.util.get_current_placement_group()
                return pg.id.hex() if pg else None

        actors = {role: Probe.options(**groups.actor_options(role)).remote() for role in ("rollout", "reward")}
        where = {role: ray.get(a.where.remote(), timeout=60) for role, a in actors.items()}
        assert where == {"rollout": groups.placement("rollout")[0].id.hex(),
                         "reward": groups.placement("reward")[0].id.hex()}
        kwargs = groups.learner_kwargs()
        assert (kwargs["num_workers"], kwargs["num_cpus"], kwargs["bundle_offset"]) == (1, 0.5, 0)
        assert kwargs["placement_group"] is groups.placement("learner")[0]
        assert all(len(nodes) == 1 and nodes[0] for nodes in groups.bundle_nodes().values())
        with pytest.raises(InputError, match="role video_qa has 0 actor"):
            groups.scheduling_strategy("video_qa")
        for a in actors.values():
            ray.kill(a)
    assert groups.groups == []


def test_create_refuses_before_waiting_when_the_cluster_is_too_small(ray_local):
    t = time.monotonic()
    with pytest.raises(InputError, match=r"4 CPU in all but the cluster has 2: rollout 4 × 1 CPU"):
        create(plan(cfg(rollout=(4, 1.0, 0.0))), timeout_s=600)
    with pytest.raises(InputError, match="needs 0 GPU, 4 CPU on one node but the largest node has 0 GPU, 2 CPU"):
        create(plan(cfg(rollout=(1, 2.0, 0.0, 2))), timeout_s=600, cluster_resources={"CPU": 8})
    assert time.monotonic() - t < 10


def test_create_times_out_and_cleans_up_when_resources_are_held(ray_local):
    import ray
    from ray.util import placement_group_table

    holder = ray.util.placement_group([{"CPU": 1.5}])            # another job holding most of the CPUs
    ray.get(holder.ready(), timeout=60)
    try:
        before = set(placement_group_table())
        with pytest.raises(InputError, match=r"could not be scheduled within 2 s .*free for it 0 GPU, 0\.5 CPU"):
            create(plan(PlacementConfig()), timeout_s=2)
        ours = {k: v for k, v in placement_group_table().items() if k not in before}
        assert ours and all(v["state"] == "REMOVED" for v in ours.values())
    finally:
        ray.util.remove_placement_group(holder)


# ----------------------------------------------------------------------------------- submission pieces (no cluster)


def test_pipeline_entrypoint_quotes_and_relativises(tmp_path):
    from longvideo_r1.cluster.submit import pipeline_entrypoint

    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "x.yaml").write_text("name: x\n")
    assert pipeline_entrypoint(str(tmp_path / "configs" / "x.yaml"), ["name=a b", "corpus.videos=2"],
                               working_dir=tmp_path) == ("lvr1 pipeline --config configs/x.yaml "
                                                         "--set 'name=a b' --set corpus.videos=2")
    assert pipeline_entrypoint(None, [], tmp_path) == "lvr1 pipeline"
    assert pipeline_entrypoint("/cluster/only.yaml", [], tmp_path) == "lvr1 pipeline --config /cluster/only.yaml"
    with pytest.raises(InputError, match="no such file here"):
        pipeline_entrypoint("configs/missing.yaml", [], tmp_path)
    with pytest.raises(InputError, match="outside the working dir"):
        pipeline_entrypoint(os.path.relpath(REPO / "configs" / "demo-cpu.yaml"), [], tmp_path)
    with pytest.raises(InputError, match="--set 'oops'"):
        pipeline_entrypoint(None, ["oops"], tmp_path)


def test_runtime_env_leaves_big_folders_and_tokens_out(tmp_path):
    from longvideo_r1.cluster.submit import parse_env, runtime_env

    env = runtime_env(tmp_path, parse_env(["A=1", "B=x=y"]), ["data/"])
    assert env["working_dir"] == str(tmp_path.resolve())
    assert {"/runs/", "/.venv/", "/.git/", "data/"} <= set(env["excludes"])
    assert env["env_vars"] == {"PYTHONUNBUFFERED": "1", "A": "1", "B": "x=y"}
    with pytest.raises(InputError, match="the token must not travel"):
        runtime_env(tmp_path, {"RAY_AUTH_TOKEN": "t"})
    with pytest.raises(InputError, match="NAME=VALUE"):
        parse_env(["NOVALUE"])
    with pytest.raises(InputError, match="not a folder"):
        runtime_env(tmp_path / "nope")


def test_token_is_found_where_ray_looks_in_rays_order(tmp_path, monkeypatch):
    from longvideo_r1.cluster.submit import resolve_token

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_token()[0] is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert resolve_token() == ("home-token", str(tmp_path / ".ray" / "auth_token"))
    (tmp_path / "file").write_text("  file-token  ")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "file"))
    assert resolve_token()[0] == "file-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert resolve_token()[0] == "env-token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert resolve_token()[0] is None
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(InputError, match="RAY_AUTH_TOKEN_PATH=.*cannot be read"):
        resolve_token()


def test_address_argument_wins_over_rays_environment_variables(monkeypatch):
    from longvideo_r1.cluster.submit import resolve_address

    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")                 # a GCS address: not the job API
    assert resolve_address() == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265/")
    assert resolve_address() == "http://10.0.0.1:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.2:8265")
    assert resolve_address() == "http://10.0.0.2:8265"
    assert resolve_address("127.0.0.1:9999") == "http://127.0.0.1:9999"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_cluster_at_the_address_is_one_clear_line():
    result = subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--config",
                             "configs/demo-cpu.yaml", "--address", f"http://127.0.0.1:{_free_port()}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lvr1: error: no Ray cluster answers at http://127.0.0.1:")
    assert "ray start --head --dashboard-host 127.0.0.1" in line


def test_a_folder_corpus_with_relative_paths_is_refused_before_any_upload():
    result = subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--config",
                             "configs/folder-cpu.yaml", "--address", f"http://127.0.0.1:{_free_port()}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lvr1: error: config key corpus.path: 'my-videos/videos' is relative") and "/shared/" in line


def test_a_folder_corpus_on_absolute_paths_goes_on_to_the_cluster():
    result = subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--config",
                             "configs/qwen3-8b-1node-8gpu.yaml", "--address", f"http://127.0.0.1:{_free_port()}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "corpus.path /shared/cgbench/videos is not on this machine" in result.stderr
    assert "no Ray cluster answers at http://127.0.0.1:" in result.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------- a real Ray head on 127.0.0.1

MARKER = "LVR1_TEST_RAY_HEAD"


@dataclass
class Head:
    url: str
    token: str
    token_file: Path
    root: Path


def _marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries our marker: exactly the processes of our head."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def _stop_head(proc: subprocess.Popen, marker: str) -> None:
    """Stop only our head: SIGTERM to its `ray start --block` (it shuts its own processes down), then
    SIGKILL whatever still carries our marker (workers, drivers). No `ray stop`: it would stop every
    Ray on the machine, other engineers' included."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 20
    while (pids := _marked_pids(marker)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    assert not _marked_pids(marker), "processes of the test's Ray head survived"


@pytest.fixture(scope="module")
def ray_head():
    # A short temp dir of its own: Ray's socket paths live under it and must stay under 108 bytes, and
    # its session files never mix with other Ray instances on the machine.
    root = Path(tempfile.mkdtemp(prefix="lvr1h", dir="/tmp"))
    token = secrets.token_hex(16)
    token_file = root / "auth_token"
    token_file.write_text(token)
    dashboard_port = _free_port()
    ports = {"port": _free_port(), "dashboard-port": dashboard_port, "ray-client-server-port": _free_port(),
             "dashboard-agent-listen-port": _free_port(), "dashboard-agent-grpc-port": _free_port(),
             "runtime-env-agent-port": _free_port(), "metrics-export-port": _free_port(),
             "node-manager-port": _free_port(), "object-manager-port": _free_port()}
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token_file), MARKER: str(root), "RAY_USAGE_STATS_ENABLED": "0",
           # the job's `python` and `lvr1` come from the PATH of `ray start`
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(var, None)
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=1", "--num-gpus=0",
           f"--temp-dir={root}", "--disable-usage-stats", "--object-store-memory=200000000"]
    cmd += [f"--{k}={v}" for k, v in ports.items()]
    log = open(root / "ray-start.log", "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray start failed:\n{(root / 'ray-start.log').read_text()[-3000:]}")
            try:
                request = urllib.request.Request(url + "/api/version", headers={"Authorization": f"Bearer {token}"})
                urllib.request.urlopen(request, timeout=2).read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    log_tail = (root / "ray-start.log").read_text()[-3000:]
                    pytest.fail(f"the Ray head did not answer in 90 s:\n{log_tail}")
                time.sleep(0.5)
        yield Head(url, token, token_file, root)
    finally:
        _stop_head(proc, str(root))
        log.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def job_dir(tmp_path):
    """A small working dir with big folders that must not be uploaded."""
    root = tmp_path / "repo"
    (root / "runs").mkdir(parents=True)
    (root / "runs" / "big.bin").write_bytes(b"\0" * 4096)
    (root / ".venv").mkdir()
    (root / ".venv" / "marker").write_text("x")
    (root / "job.py").write_text(
        "import os, ray\n"
        "print(os.environ['LVR1_GREETING'], flush=True)\n"
        "print('uploaded runs:', os.path.exists('runs/big.bin'), 'venv:', os.path.exists('.venv/marker'))\n"
        "ray.init()  # the driver joins the token-protected cluster\n"
        "print('cluster CPUs:', ray.cluster_resources().get('CPU'))\n")
    return root


@pytest.fixture
def client_env(ray_head, monkeypatch):
    """This process as a client of the test head: its token file, no address variables."""
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_file))
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    for var in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    return {k: v for k, v in os.environ.items()}


@pytest.mark.slow
def test_submit_uploads_streams_logs_and_succeeds(ray_head, client_env, job_dir, monkeypatch):
    from longvideo_r1.cluster.submit import submit

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")   # Ray would let this override the address: we don't
    out = io.StringIO()
    result = submit("python job.py", address=ray_head.url, working_dir=job_dir,
                    env={"LVR1_GREETING": "hello from lvr1 job"}, out=out)
    logs = out.getvalue()
    assert result.status == "SUCCEEDED", logs
    assert result.exit_code == 0 and result.job_id.startswith("raysubmit_")
    assert "hello from lvr1 job" in logs
    assert "uploaded runs: False venv: False" in logs
    assert "cluster CPUs: 1.0" in logs


@pytest.mark.slow
def test_cli_exits_non_zero_and_says_the_job_failed(ray_head, client_env, job_dir):
    failing = "python -c 'import sys; print(\"about to fail\"); sys.exit(1)'"
    result = subprocess.run(
        [sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--address", ray_head.url,
         "--working-dir", str(job_dir), "--entrypoint", failing],
        cwd=REPO, env=client_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr
    assert "about to fail" in result.stdout
    assert re.search(r"lvr1 submit: job raysubmit_\w+ FAILED: .*exit code 1", result.stderr), result.stderr


@pytest.mark.slow
def test_no_wait_prints_the_job_id(ray_head, client_env, job_dir):
    from ray.job_submission import JobSubmissionClient

    result = subprocess.run(
        [sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--address", ray_head.url, "--no-wait",
         "--working-dir", str(job_dir), "--entrypoint", "echo queued"],
        cwd=REPO, env=client_env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert job_id.startswith("raysubmit_")
    client = JobSubmissionClient(ray_head.url, headers={"Authorization": f"Bearer {ray_head.token}"})
    assert client.get_job_status(job_id).value in ("PENDING", "RUNNING", "SUCCEEDED")


@pytest.mark.slow
def test_token_problems_are_one_clear_line(ray_head, client_env, job_dir, tmp_path):
    from longvideo_r1.cluster.submit import submit

    with pytest.raises(InputError, match="rejected the token from the token argument; put the cluster's token"):
        submit("echo hi", address=ray_head.url, working_dir=job_dir, token="not-the-token")
    # A fresh process with no token anywhere (Ray caches RAY_AUTH_MODE per process, so this must be a new one).
    env = {k: v for k, v in client_env.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)                                  # no ~/.ray/auth_token either
    result = subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", "submit", "--address", ray_head.url,
                             "--working-dir", str(job_dir), "--entrypoint", "echo hi"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"lvr1: error: the Ray cluster at {ray_head.url} needs a token and none was found")
    assert "RAY_AUTH_TOKEN_PATH" in line and "ray get-auth-token" in line

