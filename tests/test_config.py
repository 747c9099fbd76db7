"""The config tree: one default per key, no dead keys, contradictions refused at load time."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from longvideo_r1.errors import InputError
from longvideo_r1.platform.config import DERIVED, PipelineConfig, load_config, to_dict

PACKAGE = Path(__file__).resolve().parents[1] / "longvideo_r1"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_fields(cls=PipelineConfig, prefix=""):
    """(dotted key, field) of every field in the tree, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_fields(hints[f.name], key + ".")
        else:
            yield key, f


def attributes_read(skip: set[str]) -> set[str]:
    """Names read as attributes (``x.name`` in a load) anywhere in the package outside ``skip``."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).as_posix() in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                names.add(node.attr)
    return names


def test_every_config_key_is_read_by_the_code_that_runs():
    """A key nobody reads is a dead key: it is accepted and silently ignored. The config module itself
    (loading and validation) does not count as a reader."""
    read = attributes_read({"platform/config.py"})
    dead = [key for key, f in config_fields() if f.name not in read and key not in DERIVED]
    assert dead == []


def test_no_key_has_a_second_default_hidden_in_a_factory():
    """Sections are built from their own class defaults, never from a lambda that changes them."""
    for key, f in config_fields():
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            assert not dataclasses.is_dataclass(value), key
    hints = typing.get_type_hints(PipelineConfig)
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            default = getattr(PipelineConfig(), name)
            assert default == hint(), name


def test_later_files_and_overrides_win_key_by_key(tmp_path):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("placement: {learner: {count: 1, num_cpus: 0.5}}\nrl: {rollout: {threads: 2}}\n")
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("rl: {steps: 7, rollout: {n: 3}}\n")
    config = load_config([CONFIGS / "demo-cpu.yaml", cluster, experiment], ["rl.rollout.n=5"])
    assert config.rl.steps == 7 and config.rl.rollout.n == 5 and config.rl.rollout.threads == 2
    assert config.rl.rollout.max_turn_tokens == 96          # kept from the first file
    assert config.rl.learner.lr == 2e-4 and config.placement.learner.num_cpus == 0.5


@pytest.mark.parametrize("override, key", [
    ("rl.learner.value_head=true", "rl.learner.value_head"),
    ("rl.learner.model=/tmp/x", "rl.learner.model"),
    ("sft.learner.seed=3", "sft.learner.seed"),
    ("rl.algorithm=reinforce", "rl.algorithm"),
    ("rl.kl_in_reward=0.1", "rl.kl_in_reward"),
    ("rl.kl_in_reward_kind=k9", "rl.kl_in_reward_kind"),
    ("rl.rollout.engine=tgi", "rl.rollout.engine"),
    ("rl.rollout.engine_options={tensor_parallel_size: 2}", "rl.rollout.engine_options.tensor_parallel_size"),
    ("rl.rollout.max_turn_tokens=99999", "rl.rollout.max_turn_tokens"),
    ("rl.rollout.video_qa=openai", "rl.rollout.video_qa_options.endpoint"),
    ("captions.captioner=openai", "captions.endpoint"),
    ("data.teacher=openai", "data.endpoint"),
    ("sft.learner.zero_stage=4", "sft.learner.zero_stage"),
    ("rl.learner.loss_agg=mean", "rl.learner.loss_agg"),
    ("rl.rollout.n=0", "rl.rollout.n"),
    ("rl.rollout.workers=2", "rl.rollout.workers"),
    ("rl.max_turns=3", "rl.max_turns"),
    ("rl.steps=many", "rl.steps"),
    ("placement.strategy=RANDOM", "placement.strategy"),
    ("rl.answer_rule=lenient", "rl.answer_rule"),
    ("rl.overlong=drop", "rl.overlong"),
    ("rl.max_refill_rounds=-1", "rl.max_refill_rounds"),
    ("rl.overlong_penalty=-1", "rl.overlong_penalty"),
])
def test_a_contradiction_or_a_bad_key_is_refused_at_load_naming_the_key(override, key):
    with pytest.raises(InputError) as err:
        load_config(CONFIGS / "demo-cpu.yaml", [override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_the_algorithm_decides_the_value_head_and_kl_in_reward_applies_to_ppo():
    config = load_config(CONFIGS / "demo-cpu.yaml", ["rl.algorithm=ppo", "rl.dynamic_sampling=false", "rl.kl_in_reward=0.05",
                                                      "rl.kl_in_reward_kind=k3"])
    assert config.rl.algorithm == "ppo" and config.rl.kl_in_reward_kind == "k3"


def test_every_shipped_config_sets_only_known_keys_and_round_trips(tmp_path):
    import yaml

    for path in sorted(CONFIGS.glob("*.yaml")):
        config = load_config(path)
        printed = tmp_path / path.name
        printed.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        assert load_config(printed) == config, path.name
