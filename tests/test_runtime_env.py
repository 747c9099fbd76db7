"""One runtime environment for every way the job is submitted.

`lvr1 submit` builds the job's runtime env from ``DEFAULT_EXCLUDES`` and ``DEFAULT_ENV``
(longvideo_r1/cluster/submit.py). The README's plain ``ray job submit`` example and the KubeRay
RayJob's ``runtimeEnvYAML`` write the same settings out by hand, and the ``ray up`` cluster leaves
the same folders out of the repo it syncs to the nodes; these tests read all three and fail when any
drifts from the Python definition.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from longvideo_r1.cluster.submit import DEFAULT_ENV, DEFAULT_EXCLUDES, runtime_env

REPO = Path(__file__).resolve().parents[1]
RAYJOB = REPO / "configs" / "cluster" / "rayjob-2node-8gpu.yaml"
RAY_UP = REPO / "configs" / "cluster" / "ray-2node-8gpu.yaml"


def readme_ray_job_submit() -> list[str]:
    """The README's ``ray job submit`` command as shell words (its backslash-newlines joined)."""
    text = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "ray job submit" in b]
    assert len(blocks) == 1, "README.md must have exactly one ```bash block with `ray job submit`"
    block = blocks[0]
    command = block[block.index("ray job submit"):]
    return shlex.split(command.replace("\\\n", " "), comments=True)


def option(words: list[str], name: str) -> str:
    assert words.count(name) == 1, f"the README's ray job submit must give {name} once"
    return words[words.index(name) + 1]


def test_the_python_definition_is_what_lvr1_submit_sends(tmp_path):
    env = runtime_env(tmp_path, {"HF_HOME": "/shared/hf"}, ["data/"])
    assert env["excludes"] == [*DEFAULT_EXCLUDES, "data/"]
    assert env["env_vars"] == {**DEFAULT_ENV, "HF_HOME": "/shared/hf"}
    assert env["working_dir"] == str(tmp_path.resolve())
    assert len(set(DEFAULT_EXCLUDES)) == len(DEFAULT_EXCLUDES)


def test_the_readme_ray_job_submit_carries_the_same_runtime_env():
    words = readme_ray_job_submit()
    assert words[:3] == ["ray", "job", "submit"]
    # The working dir is the repo root, as for `lvr1 submit` run from it (its --working-dir default).
    assert option(words, "--working-dir") == "."
    assert "--runtime-env" not in words  # one runtime env, given as JSON only
    spec = json.loads(option(words, "--runtime-env-json"))
    assert spec == {"excludes": list(DEFAULT_EXCLUDES), "env_vars": DEFAULT_ENV}
    assert words[words.index("--") + 1:][:2] == ["lvr1", "pipeline"]


def test_the_rayjob_runtime_env_carries_the_same_excludes_and_env():
    text = RAYJOB.read_text()
    spec = yaml.safe_load(yaml.safe_load(text)["spec"]["runtimeEnvYAML"])
    assert set(spec) == {"working_dir", "excludes", "env_vars"}
    assert spec["excludes"] == list(DEFAULT_EXCLUDES)
    # DEFAULT_ENV exactly, plus this deployment's own variables (as `lvr1 submit --env` would add).
    assert {k: spec["env_vars"][k] for k in DEFAULT_ENV if k in spec["env_vars"]} == DEFAULT_ENV
    assert all(isinstance(v, str) for v in spec["env_vars"].values())
    assert not any(k.startswith("RAY_AUTH") for k in spec["env_vars"])
    # The working dir is the repo inside the image: the WORKDIR of the image recipe in the header.
    (workdir,) = re.findall(r"^#\s+WORKDIR\s+(\S+)\s*$", text, re.M)
    assert spec["working_dir"] == workdir


def test_the_ray_up_cluster_syncs_the_repo_without_the_same_folders():
    config = yaml.safe_load(RAY_UP.read_text())
    assert config["rsync_exclude"] == list(DEFAULT_EXCLUDES)
    # Ray rsyncs the contents of "." (a trailing slash), so "/x/" is anchored at the repo root as in
    # the runtime env's gitignore syntax.
    assert config["file_mounts"]["~/longvideo-r1"] == "."
