"""Typed pipeline configuration: YAML files map one-to-one onto these dataclasses.

Every default lives here and only here. ``load_config(path, ["captions.workers=2", …])`` reads a
YAML file, applies dotted command-line overrides, and rejects unknown keys and wrongly typed values
with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longvideo_r1.cluster.resources import PlacementConfig
from longvideo_r1.errors import InputError
from longvideo_r1.platform.rl_loop import RLConfig
from longvideo_r1.platform.tracking import TrackingConfig
from longvideo_r1.trainer.sft import SFTConfig


@dataclass
class CorpusConfig:
    """The embedded demo corpus (`lvr1 corpus demo`)."""

    videos: int = 8
    """number of videos"""
    minutes: float | None = None
    """length of each video in minutes (±20%); None draws 20–60 minutes per video"""
    seed: int = 0
    """generator seed: the same seed gives the same corpus"""


@dataclass
class CaptionsConfig:
    """Building the caption store (`lvr1 captions build`)."""

    captioner: str = "offline"
    """offline (CPU: OCR, colour and shape statistics, subtitles) or openai (a VLM endpoint)"""
    endpoint: str | None = None
    """base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (captioner=openai)"""
    model: str | None = None
    """model name served at the endpoint (captioner=openai)"""
    concurrency: int = 8
    """requests in flight per video (captioner=openai)"""
    shards: int = 16
    """number of Parquet shards of the store"""
    workers: int = 2
    """videos captioned in parallel (processes)"""


@dataclass
class DataConfig:
    """Training data: SFT trajectories from a teacher (`lvr1 data sft`) and verl RL rows (`lvr1 data rl`)."""

    teacher: str = "oracle"
    """oracle (walks to the clue intervals) or openai (a served model with hints, PROTOCOL §4)"""
    endpoint: str | None = None
    """base URL of the OpenAI-compatible teacher (teacher=openai)"""
    model: str | None = None
    """teacher model name (teacher=openai)"""
    max_rounds: int = 15
    """round limit of the episodes (and of the system prompt): 15 in RL training (PROTOCOL §5)"""
    video_qa: str = "offline"
    """video_qa backend while the teacher plays: offline or none"""


@dataclass
class PipelineEvalConfig:
    """Evaluation on the held-out split: the base model, SFT, SFT + RL, and baseline navigators."""

    enabled: bool = True
    split: str = "test"
    max_rounds: int = 15
    max_turn_tokens: int = 512
    baselines: list = field(default_factory=lambda: ["random", "retrieval", "oracle"])
    """baseline navigators evaluated beside the trained models (see `lvr1 eval`)"""
    engine: str = "vllm"
    engine_options: dict = field(default_factory=lambda: {"max_model_len": 16384})


@dataclass
class RayConfig:
    """Where the pipeline's actors run."""

    address: str | None = None
    """None: join the cluster of a Ray job (RAY_ADDRESS) or start a local Ray; or an address like auto"""
    num_cpus: int | None = None
    """logical CPUs of a local Ray (None: max(4, cores): roles share the cores, they do not all compute at once)"""


@dataclass
class PipelineConfig:
    """The main job: demo corpus → caption store → SFT data → SFT → RL data → RL → evaluation."""

    name: str = "demo-cpu"
    """run name, used for MLflow and log lines"""
    output_dir: str = "runs/demo-cpu"
    """every artifact of the run lives under this folder; a rerun resumes from it"""
    model: str = "tiny-qwen3"
    """the policy to train: tiny-qwen3 or smollm2 (built by `lvr1 models prepare`) or a transformers folder"""
    models_dir: str = "runs/models"
    """where named models are built (shared by runs)"""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)


def _check_type(key: str, value, hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check_type(key, value, option)
            except InputError:
                continue
        raise InputError(f"config key {key}: {value!r} is not a {hint}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:                     # YAML 1.1 reads 1e-5 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise InputError(f"config key {key}: {value!r} is not a {hint.__name__}")
    return value


def _build(cls, data: dict, prefix: str = "", default=None):
    """``cls`` from a mapping; keys left out keep ``default``'s values (the enclosing section's default
    for a nested section, so ``placement.learner.count=2`` keeps the learner's other settings)."""
    if not isinstance(data, dict):
        raise InputError(f"config section {prefix.rstrip('.') or '(top)'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"config: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
                         f"known keys here: {', '.join(sorted(names))}")
    if default is None:
        default = cls()
    kwargs = {}
    for name in names & set(data):
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, data[name], f"{prefix}{name}.", getattr(default, name))
        else:
            kwargs[name] = _check_type(prefix + name, data[name], hint)
    return dataclasses.replace(default, **kwargs)


def apply_override(data: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in override:
        raise InputError(f"override {override!r}: write it as key.path=value, e.g. captions.workers=2")
    key, raw = override.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise InputError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise InputError(f"config file {path}: cannot be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    for override in overrides or []:
        apply_override(data, override)
    return _build(PipelineConfig, data)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
