"""The shipped cluster files start everything the 2-node recipe needs, and agree with it.

``configs/cluster/ray-2node-8gpu.yaml`` (``ray up``) and ``configs/cluster/rayjob-2node-8gpu.yaml``
(a KubeRay RayJob, with its volume in ``configs/cluster/shared-pvc.yaml``) are checked against the
schemas their tools apply — Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs)
and the RayJob API of KubeRay v1.7.0 (``tests/kuberay_schema.py``: its fields written out, its pod
templates checked against the Kubernetes schemas of kubernetes-validate), with unknown fields refused,
as ``kubectl apply`` does — and
against the recipe ``configs/qwen3-8b-2node-16gpu.yaml`` as the config loader reads it: the recipe's
placement, planned on the nodes the files define, uses exactly their GPUs and fits the CPUs Ray
advertises there; the pods' CPU and memory requests fit the allocatable resources of the instance type
they are pinned to; every path of the recipe is on the shared volume every node mounts; the models the
recipe names are the folders the files download once; the token reaches every node.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from longvideo_r1.cluster.resources import plan_on_nodes
from longvideo_r1.platform.config import PipelineConfig, load_config, to_dict
from tests.kuberay_schema import KUBERNETES_VERSION, pod_templates, rayjob_errors

REPO = Path(__file__).resolve().parents[1]
RAY_UP = REPO / "configs" / "cluster" / "ray-2node-8gpu.yaml"
RAYJOB = REPO / "configs" / "cluster" / "rayjob-2node-8gpu.yaml"
PVC = REPO / "configs" / "cluster" / "shared-pvc.yaml"
RECIPE = REPO / "configs" / "qwen3-8b-2node-16gpu.yaml"
ONE_NODE_RECIPE = REPO / "configs" / "qwen3-8b-1node-8gpu.yaml"

SHARED = "/shared"
PATH_KEYS = ("output_dir", "models_dir", "model", "corpus.path", "corpus.annotations", "served.video_qa.model")
"""the recipe's keys that name files or folders: all of them must be on the shared volume"""


@dataclass(frozen=True)
class InstanceType:
    vcpus: int
    gpus: int
    memory_gib: int
    eks_max_pods: int = 0
    """pods per node on EKS (the VPC CNI's limit for the type); the kubelet's memory reserve grows with it"""


INSTANCE_TYPES = {
    "p5.48xlarge": InstanceType(vcpus=192, gpus=8, memory_gib=2048),      # 8 × H100 80 GB
    "p4de.24xlarge": InstanceType(vcpus=96, gpus=8, memory_gib=1152, eks_max_pods=737),   # 8 × A100 80 GB
}
"""the AWS instance types the cluster files name (AWS's published figures)"""


def eks_allocatable(instance: InstanceType) -> dict[str, float]:
    """A node's allocatable CPU and memory (GiB) on EKS: capacity less the kubelet's reserve (CPU: 6 % of
    the first core, 1 % of the second, 0.5 % of the next two, 0.25 % of the rest; memory: 255 MiB + 11
    MiB per pod) and the hard eviction threshold (100 MiB)."""
    v = instance.vcpus
    reserved_cpu = 0.06 + 0.01 * min(1, v - 1) + 0.005 * min(2, max(0, v - 2)) + 0.0025 * max(0, v - 4)
    reserved_mib = 255 + 11 * instance.eks_max_pods + 100
    return {"CPU": v - reserved_cpu, "memory_gib": instance.memory_gib - reserved_mib / 1024}


def quantity(value) -> float:
    """A Kubernetes quantity as a number (CPUs, or GiB for memory: 500m, 88, 900Gi, 512Mi)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2 ** -20, "Mi": 2 ** -10, "Gi": 1.0, "Ti": 2 ** 10}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def recipe_config(path: Path = RECIPE) -> PipelineConfig:
    return load_config(path)


def key(config: PipelineConfig, dotted: str):
    node = to_dict(config)
    for part in dotted.split("."):
        node = node[part]
    return node


def under(path: str, mounts: list[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def downloads(commands: list[str]) -> dict[str, str]:
    """``{local folder: hub id}`` of every ``hf download ID --local-dir DIR`` in shell commands."""
    return {d: repo for c in commands for repo, d in re.findall(r"\bhf download (\S+) --local-dir ([^\s;&|]+)", c)}


def assert_models_are_the_downloaded_folders(config: PipelineConfig, fetched: dict[str, str]) -> None:
    served = key(config, "served.video_qa")
    assert config.model in fetched, f"the policy {config.model} is not downloaded by the cluster file"
    assert served["model"] in fetched, f"the VLM {served['model']} is not downloaded by the cluster file"
    # the served name is the hub id of the folder served, and is what the episodes and captioner ask for
    assert fetched[served["model"]] == served["served_model_name"]
    assert config.rl.rollout.video_qa_options["model"] == served["served_model_name"]
    assert config.captions.model == served["served_model_name"]


def assert_every_gpu_is_placed(plan, nodes: list[dict]) -> None:
    """The recipe's plan (which fits, or plan_on_nodes raised) uses every GPU the cluster gives Ray."""
    given = sum(n["GPU"] for n in nodes)
    assert plan.totals["GPU"] == given, (f"the recipe places {plan.totals['GPU']:g} GPUs, the cluster gives "
                                         f"Ray {given:g}:\n{plan.describe()}")

# ----------------------------------------------------------------------------------- the recipe


@pytest.mark.parametrize("path", [RECIPE, ONE_NODE_RECIPE], ids=lambda p: p.name)
def test_every_path_of_the_gpu_recipes_is_on_the_shared_volume(path):
    config = recipe_config(path)
    for dotted in PATH_KEYS:
        assert under(key(config, dotted), [SHARED]), f"{path.name}: {dotted}={key(config, dotted)!r} is not under {SHARED}"
    # nothing else in the recipe names an absolute path off the volume
    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            for v in node:
                yield from strings(v)
        elif isinstance(node, str):
            yield node
    assert [s for s in strings(to_dict(config)) if s.startswith("/") and not under(s, [SHARED])] == []


@pytest.mark.parametrize("path", [RECIPE, ONE_NODE_RECIPE], ids=lambda p: p.name)
def test_the_vlm_is_a_ray_role_of_the_recipe(path):
    config = recipe_config(path)
    vq = config.placement.video_qa
    assert vq.count >= 1 and vq.num_gpus == 1 and vq.tensor_parallel_size == 2
    assert config.rl.rollout.video_qa_options["endpoint"] == "role:video_qa"
    assert config.captions.endpoint == "role:video_qa"


# ----------------------------------------------------------------------------------- ray up


def ray_up() -> dict:
    return yaml.safe_load(RAY_UP.read_text())


def ray_up_nodes(cluster: dict) -> list[dict]:
    """The resources Ray advertises on each node `ray up` starts (the head, then min_workers of each type)."""
    types = cluster["available_node_types"]
    nodes = [types[cluster["head_node_type"]]]
    for name, t in types.items():
        if name != cluster["head_node_type"]:
            assert t["min_workers"] == t["max_workers"], f"{name}: a fixed cluster (min_workers = max_workers)"
            nodes += [t] * t["min_workers"]
    return nodes


def ray_up_mounts(cluster: dict) -> list[str]:
    """Container paths of the host folders mounted into Ray's container, where the host mounted a file
    system there in initialization_commands."""
    host_mounts = re.findall(r"\bmount -t \S+ .*?(/\S+)\s*;", " ".join(cluster["initialization_commands"]))
    mounts = []
    for option in cluster["docker"]["run_options"]:
        words = shlex.split(option)
        if words[0] == "-v":
            host, container = words[1].split(":")[:2]
            assert host in host_mounts, f"{host} is bound into the container but nothing is mounted there"
            mounts.append(container)
    return mounts


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(setup_command=[]), "setup_command"),                          # a misspelt key
    (lambda c: c["available_node_types"]["head"].update(resources={"GPU": "8"}), "'8' is not of type"),
])
def test_rays_validator_refuses_a_broken_cluster_file(change, message):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = ray_up()
    change(cluster)
    with pytest.raises(jsonschema.ValidationError, match=message):
        validate_config(prepare_config(cluster))


def test_ray_up_file_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(ray_up()))    # what `ray up` runs before it talks to AWS


def test_ray_up_gives_ray_exactly_the_gpus_the_recipe_places_and_fits_its_cpus():
    cluster = ray_up()
    nodes = ray_up_nodes(cluster)
    assert len(nodes) == 2 and cluster["max_workers"] == 1
    for node in nodes:
        instance = INSTANCE_TYPES[node["node_config"]["InstanceType"]]
        assert node["resources"]["GPU"] == instance.gpus
        assert node["resources"]["CPU"] <= instance.vcpus
    plan = plan_on_nodes(recipe_config().placement, [n["resources"] for n in nodes])
    assert_every_gpu_is_placed(plan, [n["resources"] for n in nodes])
    for load, node in zip(plan.node_load, nodes):
        assert load["CPU"] <= node["resources"]["CPU"]


def test_ray_up_mounts_the_shared_file_system_where_the_recipe_keeps_everything():
    cluster = ray_up()
    mounts = ray_up_mounts(cluster)
    assert mounts == [SHARED]
    config = recipe_config()
    for dotted in PATH_KEYS:
        assert under(key(config, dotted), mounts), f"{dotted}={key(config, dotted)!r} is on no mounted volume"
    # the host command mounts the file system named by the one value a user replaces
    (init,) = cluster["initialization_commands"]
    assert init.count("REPLACE") == 1 and "EFS_ID=fs-REPLACE-WITH-EFS-ID" in init and "mountpoint -q /shared ||" in init
    for start in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        hf_home = re.search(r"\bHF_HOME=([^\s;]+)", " ".join(start)).group(1)
        assert under(hf_home, mounts) and "HF_HUB_OFFLINE=1" in " ".join(start)


def test_ray_up_downloads_the_recipes_models_once_on_the_head():
    cluster = ray_up()
    fetched = downloads(cluster["head_setup_commands"])
    assert fetched and all(under(d, ray_up_mounts(cluster)) for d in fetched)
    assert not downloads(cluster["setup_commands"] + cluster["worker_setup_commands"])   # the head only
    assert_models_are_the_downloaded_folders(recipe_config(), fetched)


def test_ray_up_passes_the_token_to_every_node():
    cluster = ray_up()
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(cluster["worker_start_ray_commands"])
    assert any("pip install -e '.[gpu]'" in c for c in cluster["setup_commands"])


def test_the_one_node_recipe_fills_one_node_of_the_ray_up_type():
    (head, *_) = ray_up_nodes(ray_up())
    plan = plan_on_nodes(recipe_config(ONE_NODE_RECIPE).placement, [head["resources"]])
    assert_every_gpu_is_placed(plan, [head["resources"]])


# ----------------------------------------------------------------------------------- KubeRay RayJob


def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def pods(job: dict) -> list[tuple[str, dict, dict]]:
    """``(name, pod spec, rayStartParams)`` of every Ray pod of the job (a worker group once per replica)."""
    cluster = job["spec"]["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"]["spec"], cluster["headGroupSpec"]["rayStartParams"])]
    for group in cluster["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], "a fixed cluster"
        out += [(group["groupName"], group["template"]["spec"], group["rayStartParams"])] * group["replicas"]
    return out


def ray_resources(spec: dict, params: dict) -> dict[str, float]:
    """What Ray advertises in a pod, as KubeRay starts it: num-cpus / num-gpus of rayStartParams, else the
    Ray container's limits (CPU rounded up)."""
    limits = spec["containers"][0]["resources"]["limits"]
    return {"CPU": float(params.get("num-cpus", math.ceil(quantity(limits["cpu"])))),
            "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}


def pod_problems(job: dict) -> list[str]:
    """Pods whose requests do not fit the allocatable resources of the instance type they are pinned to."""
    problems = []
    for name, spec, params in pods(job):
        instance_name = spec["nodeSelector"]["node.kubernetes.io/instance-type"]
        instance = INSTANCE_TYPES[instance_name]
        free = eks_allocatable(instance)
        main = [c["resources"]["requests"] for c in spec["containers"]]
        init = [c["resources"]["requests"] for c in spec.get("initContainers", [])]
        # Kubernetes schedules a pod by the larger of its containers' sum and its largest init container
        cpu = max([sum(quantity(r["cpu"]) for r in main)] + [quantity(r["cpu"]) for r in init])
        memory = max([sum(quantity(r["memory"]) for r in main)] + [quantity(r["memory"]) for r in init])
        gpus = sum(int(r.get("nvidia.com/gpu", 0)) for r in main)
        if cpu > free["CPU"]:
            problems.append(f"{name}: asks {cpu:g} CPU, a {instance_name} has {free['CPU']:.2f} allocatable")
        if memory > free["memory_gib"]:
            problems.append(f"{name}: asks {memory:g} GiB, a {instance_name} has {free['memory_gib']:.1f} allocatable")
        if gpus != instance.gpus or ray_resources(spec, params)["GPU"] != gpus:
            problems.append(f"{name}: {gpus} GPUs asked, Ray told {ray_resources(spec, params)['GPU']:g}, "
                            f"a {instance_name} has {instance.gpus}")
    return problems


def test_the_rayjob_is_valid_under_the_kuberay_api_and_its_pods_under_kubernetes():
    job = rayjob()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert len(pod_templates(job)) == 2 + len(job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert rayjob_errors(job) == []


@pytest.mark.parametrize("change, message", [
    (lambda j: j["spec"].update(shutdownAfterJobFinish=True), "'shutdownAfterJobFinish' was unexpected"),
    (lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
     .update(resourcez={}), "'resourcez' was unexpected"),
    (lambda j: j["spec"]["submitterPodTemplate"]["spec"].update(volumez=[]), "'volumez' was unexpected"),
    (lambda j: j["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas="1"), "'1' is not of type 'integer'"),
    (lambda j: j["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"), "'tokens' is not one of"),
])
def test_the_schemas_refuse_unknown_fields_and_wrong_types(change, message):
    job = rayjob()
    change(job)
    assert [e for e in rayjob_errors(job) if message in e]


def test_rayjob_pods_fit_their_nodes_and_give_ray_the_gpus_the_recipe_places():
    job = rayjob()
    assert pod_problems(job) == []
    nodes = [ray_resources(spec, params) for _, spec, params in pods(job)]
    plan = plan_on_nodes(recipe_config().placement, nodes)
    assert_every_gpu_is_placed(plan, nodes)
    for load, node in zip(plan.node_load, nodes):
        assert load["CPU"] <= node["CPU"]


def test_a_pod_asking_for_every_vcpu_of_its_node_never_fits():
    job = rayjob()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    head["requests"]["cpu"] = head["limits"]["cpu"] = "96"          # a p4de.24xlarge has 96 vCPUs
    (problem,) = pod_problems(job)
    assert problem == "head: asks 96 CPU, a p4de.24xlarge has 95.69 allocatable"


def test_every_rayjob_pod_mounts_the_shared_claim_where_the_recipe_keeps_everything():
    job = rayjob()
    pvc = yaml.safe_load(PVC.read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    kubernetes_validate.validate(pvc, KUBERNETES_VERSION, strict=True)      # raises on a bad claim
    specs = [spec for _, spec, _ in pods(job)] + [job["spec"]["submitterPodTemplate"]["spec"]]
    for spec in specs:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        for container in spec["containers"] + spec.get("initContainers", []):
            mounted = [m["mountPath"] for m in container["volumeMounts"]
                       if claims.get(m["name"]) == pvc["metadata"]["name"]]
            assert mounted == [SHARED], f"{container['name']} mounts the shared claim at {mounted}"
    config = recipe_config()
    for dotted in PATH_KEYS:
        assert under(key(config, dotted), [SHARED]), f"{dotted}={key(config, dotted)!r} is on no mounted volume"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert under(env["HF_HOME"], [SHARED]) and env["HF_HUB_OFFLINE"] == "1"


def test_the_rayjob_downloads_the_recipes_models_before_ray_starts_on_the_head():
    job = rayjob()
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    fetched = downloads([" ".join(c.get("command", []) + c.get("args", [])) for c in head["initContainers"]])
    assert fetched and all(under(d, [SHARED]) for d in fetched)
    for _, spec, _ in pods(job)[1:]:
        assert "initContainers" not in spec        # workers do not download: they read the head's copy
    assert_models_are_the_downloaded_folders(recipe_config(), fetched)


def test_the_rayjob_runs_the_recipe_with_token_auth():
    job = rayjob()
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["lvr1", "pipeline"] and "--set" not in words    # the recipe as shipped
    config = words[words.index("--config") + 1]
    assert (REPO / config).resolve() == RECIPE and config in (REPO / "README.md").read_text()
    # the pods run the image the submitter uses (KubeRay's default submitter takes the head's image)
    images = {c["image"] for _, spec, _ in pods(job) for c in spec["containers"] + spec.get("initContainers", [])}
    images |= {c["image"] for c in job["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1
