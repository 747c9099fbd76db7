"""Typed pipeline configuration: YAML files map one-to-one onto these dataclasses.

The tree: this module's sections (corpus, captions, data, eval, ray) and the sections owned by the
rooms that read them: ``sft`` (:class:`~longvideo_r1.trainer.sft.SFTConfig`), ``rl``
(:class:`~longvideo_r1.trainer.rl.RLConfig`, with ``rl.rollout``
:class:`~longvideo_r1.rollout.episodes.RolloutConfig` and ``rl.learner`` / ``sft.learner``
:class:`~longvideo_r1.trainer.learner.LearnerConfig`), ``tracking``
(:class:`~longvideo_r1.platform.tracking.TrackingConfig`), ``placement``
(:class:`~longvideo_r1.cluster.resources.PlacementConfig`), ``served``
(:class:`~longvideo_r1.cluster.served.ServedConfig`) and ``model_options``
(:class:`~longvideo_r1.models.FittedQwen3Config`). Every key has one default, in its
dataclass; recipes set what differs.

``load_config([file, …], ["captions.workers=2", …])`` lays the YAML files over the defaults (later
files win, key by key), applies dotted command-line overrides, and refuses, before anything starts,
with an :class:`InputError` naming the key: unknown keys, wrongly typed values, keys that another
setting decides (:data:`DERIVED`) and contradictions between settings (:func:`validate`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from longvideo_r1.cluster.paths import STORE_ACCESS
from longvideo_r1.cluster.resources import PlacementConfig
from longvideo_r1.cluster.served import ServedConfig
from longvideo_r1.errors import InputError
from longvideo_r1.models import FittedQwen3Config
from longvideo_r1.platform.tracking import TrackingConfig
from longvideo_r1.rollout.weight_sync import BACKENDS as SYNC_BACKENDS
from longvideo_r1.rollout.weight_sync import MODES as SYNC_MODES
from longvideo_r1.storage import SCHEMES, StorageConfig, is_uri
from longvideo_r1.trainer.rl import RLConfig
from longvideo_r1.trainer.sft import SFTConfig
from longvideo_r1.trainer.weight_sync import SLEEP_MODES


@dataclass
class SplitsConfig:
    """How a folder corpus is split, by video (a video's questions stay together). Used only when
    neither the annotations (a ``split`` field per row) nor a ``splits.json`` beside them name the
    split of each video."""

    val: float = 0.1
    """share of the videos held out for validation during RL"""
    test: float = 0.1
    """share of the videos held out for the evaluation report"""
    seed: int = 0
    """shuffle seed: the same seed gives the same split"""


@dataclass
class CorpusConfig:
    """The videos and questions everything is trained and evaluated on.

    ``source: demo`` generates the embedded demo corpus (``videos``, ``minutes``, ``seed``);
    ``source: folder`` reads your videos from ``path`` and your questions from ``annotations`` in
    ``format`` (checked first: `lvr1 corpus check`)."""

    source: str = "demo"
    """demo (generated, CPU-sized) or folder (your videos and annotation file)"""
    path: str | None = None
    """source folder: the folder of video files (anything decord reads; NAME.srt beside a video is
    its subtitles); the video id is the file name without extension"""
    annotations: str | None = None
    """source folder: the annotation file (.json, .jsonl or .parquet) or a folder of them"""
    format: str = "auto"
    """source folder: lvr1, cgbench, lvbench, videomme, mlvu or auto (told from the first row's fields)"""
    splits: SplitsConfig = field(default_factory=SplitsConfig)
    """source folder: held-out shares of the videos"""
    videos: int = 8
    """source demo: number of videos"""
    minutes: float | None = None
    """source demo: length of each video in minutes (±20%); None draws 20–60 minutes per video"""
    seed: int = 0
    """source demo: generator seed (the same seed gives the same corpus)"""
    dense_train: bool = False
    """source demo: a question for every sign of the train videos (2-3x the training questions; the
    videos and the validation and test questions do not change)"""


@dataclass
class CaptionsConfig:
    """Building the caption store (`lvr1 captions build`)."""

    captioner: str = "demo"
    """openai: a vision-language model behind an OpenAI-compatible endpoint, the only captioner that
    says what happens, who and what is seen (what real footage needs); offline: CPU signals only
    (on-screen text, speech, subtitles, cuts, brightness, motion); demo: knows only the generated
    demo world (its palette, shapes and signs)"""
    endpoint: str | None = None
    """base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (captioner=openai)"""
    endpoints: list | None = None
    """several base URLs serving the same model, instead of endpoint: the requests are shared among
    them (captioner=openai)"""
    model: str | None = None
    """model name served at the endpoint (captioner=openai)"""
    concurrency: int = 8
    """requests in flight per video (captioner=openai)"""
    concurrency_per_endpoint: int | None = None
    """requests in flight at one endpoint, for the whole build (all workers, all Ray tasks); None:
    workers × concurrency (captioner=openai)"""
    max_retries: int = 4
    """tries of a request after the first, over all endpoints: a connection error, a timeout, HTTP
    408/409/429/5xx is retried, at another endpoint when one has room (captioner=openai)"""
    request_timeout_s: float = 120.0
    """seconds a request may wait for its answer before it counts as failed (captioner=openai)"""
    retry_backoff_s: float = 0.5
    """wait before the first retry of a request; doubled at each further one, at most 8 s, or the
    Retry-After the server asks for (captioner=openai)"""
    shards: int = 16
    """number of Parquet shards of the store"""
    workers: int = 2
    """videos captioned in parallel: local processes, or Ray tasks when Ray is there (ray.address, a
    Ray job)"""


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
    """round limit of the teacher's episodes (and of their system prompt); the RL rows and episodes use
    rl.rollout.max_rounds"""
    video_qa: str = "demo"
    """video_qa backend while the teacher plays: demo, offline, openai (data.video_qa_options) or none"""
    video_qa_options: dict = field(default_factory=dict)
    """options of an openai video_qa backend: endpoint, model (as rl.rollout.video_qa_options)"""
    concurrency: int = 1
    """questions the teacher plays at once (above 1: Ray actors; an openai teacher serves many)"""
    price_per_input_token: float | None = None
    """USD per prompt token of the teacher endpoint, to report the data's cost (None: not reported)"""
    price_per_output_token: float | None = None
    """USD per completion token of the teacher endpoint"""


@dataclass
class PipelineEvalConfig:
    """Evaluation on the held-out split: the base model, SFT, SFT + RL, and baseline navigators."""

    enabled: bool = True
    split: str = "test"
    max_rounds: int = 15
    """round limit of the evaluation episodes (PROTOCOL: 30 at evaluation; the engine, its options and
    the token limits are rl.rollout's, played greedily, one episode per question)"""
    baselines: list = field(default_factory=lambda: ["random", "retrieval", "oracle"])
    """baseline navigators evaluated beside the trained models (see `lvr1 eval`)"""


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
    """the policy to train: tiny-qwen3 or smollm2 (built by `lvr1 models prepare`), fitted-qwen3 (a
    random-init Qwen3 whose tokenizer is fitted to this run's corpus text, built in OUTPUT_DIR/model),
    a transformers folder or a model hub id"""
    models_dir: str = "runs/models"
    """where named models are built (shared by runs)"""
    model_options: FittedQwen3Config = field(default_factory=FittedQwen3Config)
    """model fitted-qwen3: the vocabulary size of its fitted tokenizer and the shape of its body"""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: PipelineEvalConfig = field(default_factory=PipelineEvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    served: ServedConfig = field(default_factory=ServedConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    """where the run is published beyond output_dir (s3://, gs://, or a folder every node mounts)"""
    """models this run serves itself as Ray roles (vLLM OpenAI servers on placement.<role>); endpoints
    reach them as role:<name>"""


DERIVED = {
    "sft.learner.model": "the pipeline's model (the top-level key model)",
    "sft.learner.seed": "sft.seed",
    "sft.learner.value_head": "the stage (SFT trains no value head)",
    "rl.learner.model": "the SFT model (or the top-level key model when SFT is off)",
    "rl.learner.seed": "rl.seed",
    "rl.learner.value_head": "rl.algorithm (an estimator with a critic, ppo, carries a value head)",
}
"""Keys that another setting decides: setting them is refused, naming what decides them."""


def _refuse_derived(data: dict) -> None:
    """A derived key may appear only with its default value (as ``lvr1 config`` prints it)."""
    from longvideo_r1.trainer.learner import LearnerConfig

    for key, decided_by in DERIVED.items():
        node = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if node != getattr(LearnerConfig(), key.rsplit(".", 1)[1]):
                raise InputError(f"config key {key}: set by {decided_by}; remove it from the config")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise InputError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _at_least(key: str, value, low) -> None:
    if value < low:
        raise InputError(f"config key {key}: {value!r} must be at least {low}")


def _check_learner(prefix: str, learner) -> None:
    from longvideo_r1.trainer.algos import KL_KINDS
    from longvideo_r1.trainer.learner import LOSS_AGGREGATIONS

    _choice(f"{prefix}.zero_stage", learner.zero_stage, (0, 1, 2, 3))
    _choice(f"{prefix}.dtype", learner.dtype, ("auto", "float32", "bf16"))
    _choice(f"{prefix}.schedule", learner.schedule, ("constant", "linear", "cosine"))
    _choice(f"{prefix}.loss_agg", learner.loss_agg, LOSS_AGGREGATIONS)
    _choice(f"{prefix}.kl_kind", learner.kl_kind, tuple(KL_KINDS))
    if learner.lr <= 0:
        raise InputError(f"config key {prefix}.lr: {learner.lr!r} must be positive")
    _at_least(f"{prefix}.micro_batch_tokens", learner.micro_batch_tokens, 1)
    _at_least(f"{prefix}.ppo_epochs", learner.ppo_epochs, 1)


def _check_endpoint(prefix: str, kind: str, endpoint, model) -> None:
    if kind == "openai" and (not endpoint or not model):
        raise InputError(f"config key {prefix}.endpoint: {prefix} uses an OpenAI-compatible server; set "
                         f"{prefix}.endpoint (e.g. http://127.0.0.1:8000/v1) and {prefix}.model")


def _check_captions(c: CaptionsConfig) -> None:
    if c.endpoint and c.endpoints:
        raise InputError("config keys captions.endpoint and captions.endpoints: set one of them (endpoints for "
                         "several servers of the same model)")
    if c.endpoints is not None and (not c.endpoints or not all(isinstance(u, str) and u for u in c.endpoints)):
        raise InputError(f"config key captions.endpoints: {c.endpoints!r} must be a list of base URLs, e.g. "
                         "[http://10.0.0.5:8000/v1, http://10.0.0.6:8000/v1]")
    _check_endpoint("captions", c.captioner, c.endpoint or c.endpoints, c.model)
    _at_least("captions.shards", c.shards, 1)
    _at_least("captions.workers", c.workers, 1)
    _at_least("captions.concurrency", c.concurrency, 1)
    if c.concurrency_per_endpoint is not None:
        _at_least("captions.concurrency_per_endpoint", c.concurrency_per_endpoint, 1)
    _at_least("captions.max_retries", c.max_retries, 0)
    for key in ("request_timeout_s", "retry_backoff_s"):
        if getattr(c, key) <= 0:
            raise InputError(f"config key captions.{key}: {getattr(c, key)!r} must be positive seconds")


def _role_endpoints(config: PipelineConfig) -> list[tuple[str, object, str, object]]:
    """(endpoint key, its value, model key, its value) of every OpenAI-compatible backend the run uses."""
    c, d, r = config.captions, config.data, config.rl.rollout
    out = []
    if c.captioner == "openai":
        out.append(("captions.endpoint", c.endpoint, "captions.model", c.model))
    for prefix, kind, options in (("data.video_qa_options", d.video_qa, d.video_qa_options),
                                  ("rl.rollout.video_qa_options", r.video_qa, r.video_qa_options)):
        if kind == "openai":
            out.append((f"{prefix}.endpoint", options.get("endpoint"), f"{prefix}.model", options.get("model")))
    return out


def _check_served(config: PipelineConfig) -> None:
    """Served roles: a model needs replicas and replicas need a model; a ``role:`` endpoint needs its
    role served, under the model name the backend asks for."""
    from longvideo_r1.cluster.resources import SERVED_ROLES
    from longvideo_r1.cluster.served import engine_flags, role_of

    for name in SERVED_ROLES:
        s, count = config.served.role(name), config.placement.role(name).count
        if s.model and not count:
            raise InputError(f"config key placement.{name}.count: served.{name}.model is set (the {name} role is "
                             f"served) but placement.{name}.count is 0; give it replicas, e.g. placement.{name}: "
                             f"{{count: 1, num_cpus: 4, num_gpus: 1}}, or set served.{name}.model: '' and use an "
                             "external endpoint URL")
        if count and not s.model:
            raise InputError(f"config key placement.{name}.count: {count} replica(s) of the {name} role, but "
                             f"served.{name}.model is empty, so nothing would run on them; set served.{name}.model "
                             f"(a model folder every node reads) or placement.{name}.count: 0")
        if s.model:
            engine_flags(s.engine_args, name)
            if s.startup_timeout_s <= 0:
                raise InputError(f"config key served.{name}.startup_timeout_s: {s.startup_timeout_s!r} must be "
                                 "positive seconds")
    if role_of(config.data.endpoint) or any(role_of(u) for u in config.captions.endpoints or []):
        key = "data.endpoint" if role_of(config.data.endpoint) else "captions.endpoints"
        raise InputError(f"config key {key}: role: endpoints are for captions.endpoint and the video_qa_options "
                         f"endpoints; give {key} URLs")
    for key, value, model_key, model in _role_endpoints(config):
        name = role_of(value)
        if name is None:
            continue
        if name not in SERVED_ROLES:
            raise InputError(f"config key {key}: {value!r} names no served role; use role:"
                             f"{' or role:'.join(SERVED_ROLES)}, or a URL such as http://127.0.0.1:8000/v1")
        s = config.served.role(name)
        if not s.model:
            raise InputError(f"config key {key}: {value!r} uses the served {name} role, but served.{name}.model is "
                             f"empty; set served.{name}.model (and placement.{name}.count ≥ 1), or give {key} the "
                             "URL of an external server, e.g. http://127.0.0.1:8000/v1")
        if model != s.name:
            raise InputError(f"config key {model_key}: {model!r}, but the {name} role serves {s.name!r} "
                             f"(served.{name}.served_model_name, else served.{name}.model); make them the same")


FORMATS = ("auto", "lvr1", "cgbench", "lvbench", "videomme", "mlvu")


def _check_corpus(config: PipelineConfig) -> None:
    c = config.corpus
    _choice("corpus.source", c.source, ("demo", "folder"))
    _choice("corpus.format", c.format, FORMATS)
    for key in ("val", "test"):
        share = getattr(c.splits, key)
        if not 0 <= share < 1:
            raise InputError(f"config key corpus.splits.{key}: {share!r} must be a share of the videos, 0 <= share < 1")
    if c.splits.val + c.splits.test >= 1:
        raise InputError(f"config key corpus.splits: val {c.splits.val} + test {c.splits.test} leave no video to "
                         "train on; lower them")
    if c.source == "demo":
        _at_least("corpus.videos", c.videos, 1)
        return
    for key in ("path", "annotations"):
        if not getattr(c, key):
            raise InputError(f"config key corpus.{key}: corpus.source folder needs corpus.path (the folder of "
                             "videos) and corpus.annotations (the annotation file)")
    demo_only = [(key, value) for key, value in (("captions.captioner", config.captions.captioner),
                                                 ("data.video_qa", config.data.video_qa),
                                                 ("rl.rollout.video_qa", config.rl.rollout.video_qa))
                 if value == "demo"]
    if demo_only:
        key = demo_only[0][0]
        raise InputError(f"config key {key}: demo knows only the generated demo world, and corpus.source is folder; "
                         f"set {key}: openai (a vision-language model endpoint, for real captions and answers) or "
                         "offline (CPU: on-screen text, speech, subtitles, cuts, brightness, motion only)")


def _check_model_options(config: PipelineConfig) -> None:
    from longvideo_r1.models import FITTED_MODEL_NAMES, check_fitted_options

    if config.model in FITTED_MODEL_NAMES:
        check_fitted_options(config.model_options, lambda key: f"config key model_options.{key}")
    elif config.model_options != FittedQwen3Config():
        changed = [f.name for f in dataclasses.fields(FittedQwen3Config)
                   if getattr(config.model_options, f.name) != getattr(FittedQwen3Config(), f.name)]
        raise InputError(f"config key model_options.{changed[0]}: model_options shape only the model "
                         f"{', '.join(FITTED_MODEL_NAMES)}, and model is {config.model}; remove model_options "
                         f"or set model: {FITTED_MODEL_NAMES[0]}")


def validate(config: PipelineConfig) -> None:
    """Refuse contradictory or impossible settings, naming the key, before any actor starts."""
    from longvideo_r1.cluster.resources import validate as validate_placement
    from longvideo_r1.trainer.algos import ADVANTAGE_ESTIMATORS, KL_KINDS

    _check_corpus(config)
    _check_model_options(config)
    _choice("captions.captioner", config.captions.captioner, ("demo", "offline", "openai"))
    _check_captions(config.captions)
    _choice("data.teacher", config.data.teacher, ("oracle", "openai"))
    _check_endpoint("data", config.data.teacher, config.data.endpoint, config.data.model)
    _choice("data.video_qa", config.data.video_qa, ("demo", "offline", "openai", "none"))
    if config.data.video_qa == "openai":
        _check_endpoint("data.video_qa_options", "openai", config.data.video_qa_options.get("endpoint"),
                        config.data.video_qa_options.get("model"))
    _at_least("data.concurrency", config.data.concurrency, 1)
    _at_least("data.max_rounds", config.data.max_rounds, 1)
    _at_least("sft.epochs", config.sft.epochs, 1)
    _check_learner("sft.learner", config.sft.learner)
    rl = config.rl
    _choice("rl.algorithm", rl.algorithm, tuple(ADVANTAGE_ESTIMATORS))
    _choice("rl.kl_in_reward_kind", rl.kl_in_reward_kind, tuple(KL_KINDS))
    if rl.kl_in_reward > 0 and not ADVANTAGE_ESTIMATORS[rl.algorithm].token_rewards:
        raise InputError(f"config key rl.kl_in_reward: rl.algorithm {rl.algorithm} does not use token rewards, so "
                         "a KL penalty in the reward changes nothing; put the KL in the loss (rl.learner.kl_coef) "
                         "or use rl.algorithm: ppo")
    _at_least("rl.steps", rl.steps, 0)
    _at_least("rl.questions_per_step", rl.questions_per_step, 1)
    _choice("rl.store_access", rl.store_access, STORE_ACCESS)
    for key, value in (("storage.uri", config.storage.uri), ("corpus.path", config.corpus.path),
                       ("corpus.annotations", config.corpus.annotations)):
        if value and "://" in str(value) and not is_uri(value):
            raise InputError(f"config key {key}: {value!r} names a filesystem lvr1 cannot open; use a local "
                             f"path or one of {', '.join(s + '://' for s in SCHEMES)}")
    _choice("rl.weight_sync", rl.weight_sync, SYNC_MODES)
    _choice("rl.rollout_sleep", rl.rollout_sleep, SLEEP_MODES)
    if rl.rollout_sleep == "always" and not config.placement.rollout.num_gpus:
        raise InputError("config key rl.rollout_sleep: always needs vLLM rollout engines on GPUs "
                         "(placement.rollout.num_gpus); use auto or never")
    _choice("rl.weight_sync_backend", rl.weight_sync_backend, SYNC_BACKENDS)
    if rl.weight_sync_bucket_mb <= 0 or rl.weight_sync_timeout_s <= 0:
        raise InputError(f"config keys rl.weight_sync_bucket_mb ({rl.weight_sync_bucket_mb}) and "
                         f"rl.weight_sync_timeout_s ({rl.weight_sync_timeout_s}) must be positive")
    if rl.weight_sync_backend == "nccl" and not (config.placement.rollout.num_gpus and config.placement.learner.num_gpus):
        raise InputError("config key rl.weight_sync_backend: nccl needs GPUs for the learner and the rollout "
                         "workers (placement.learner.num_gpus, placement.rollout.num_gpus); use gloo or auto")
    _check_learner("rl.learner", rl.learner)
    r = rl.rollout
    _choice("rl.rollout.engine", r.engine, ("vllm", "transformers"))
    _choice("rl.rollout.video_qa", r.video_qa, ("demo", "offline", "openai", "none"))
    if r.video_qa == "openai":
        _check_endpoint("rl.rollout.video_qa_options", "openai", r.video_qa_options.get("endpoint"),
                        r.video_qa_options.get("model"))
    for key in ("n", "max_rounds", "max_turn_tokens", "max_response_tokens", "max_observation_tokens", "tool_threads"):
        _at_least(f"rl.rollout.{key}", getattr(r, key), 1)
    if r.max_turn_tokens > r.max_response_tokens:
        raise InputError(f"config key rl.rollout.max_turn_tokens: {r.max_turn_tokens} exceeds "
                         f"rl.rollout.max_response_tokens ({r.max_response_tokens}); lower it")
    if "tensor_parallel_size" in r.engine_options:
        raise InputError("config key rl.rollout.engine_options.tensor_parallel_size: set by "
                         "placement.rollout.tensor_parallel_size; remove it here")
    _at_least("eval.max_rounds", config.eval.max_rounds, 1)
    validate_placement(config.placement)
    _check_served(config)


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


def _deep_merge(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base``: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_files(paths) -> dict:
    """The YAML files in order, later ones overriding earlier ones key by key (a cluster file and an
    experiment file kept apart)."""
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    data: dict = {}
    for path in paths:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise InputError(f"config file {path}: cannot be read ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"config file {path}: expected a mapping of keys at the top, got {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    return data


def load_config(paths=None, overrides: list[str] | None = None) -> PipelineConfig:
    """The resolved config: defaults, then each YAML file of ``paths`` (one path or a list; later files
    win), then each ``key.path=value`` override; unknown keys, wrong types and contradictions raise
    :class:`InputError` naming the key."""
    data = read_config_files(paths)
    for override in overrides or []:
        apply_override(data, override)
    _refuse_derived(data)
    config = _build(PipelineConfig, data)
    validate(config)
    return config


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
