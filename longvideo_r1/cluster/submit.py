"""The main job as a Ray job: ``lvr1 submit`` (Ray's job submission API, token authentication on).

``submit(pipeline_entrypoint("configs/x.yaml", ["a.b=1"]))`` uploads the working directory (the
repo, without ``runs/``, ``.venv/``, ``.git/`` and other big folders) as the job's runtime
environment, starts ``lvr1 pipeline --config configs/x.yaml --set a.b=1`` on the cluster through the
dashboard's job API, streams its logs, and returns the job's final status.

Token authentication (Ray ≥ 2.52; on by default for clusters that have a token)
------------------------------------------------------------------------------
The dashboard of a cluster started with ``RAY_AUTH_MODE=token`` (or with a token on the head:
``~/.ray/auth_token``) answers 401 to any request without ``Authorization: Bearer <token>``. The
client resolves the token exactly as Ray does: ``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``, and sends it as an explicit ``Authorization``
header. It also sets ``RAY_AUTH_MODE=token`` in ``os.environ`` when it is unset (Ray's own client
only adds the header when that variable was ``token`` *when Ray's config was first read in the
process*, so setting it later is not enough; the explicit header works either way).
``RAY_AUTH_MODE=disabled`` sends no token (only for a loopback cluster started the same way).
The token is never put in the job's runtime environment: the cluster has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from longvideo_r1.errors import InputError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# The job's runtime environment, defined once. `lvr1 submit` sends it (see :func:`runtime_env`); the
# README's `ray job submit` example and the KubeRay RayJob's `runtimeEnvYAML`
# (configs/cluster/rayjob-2node-8gpu.yaml) spell out the same excludes and env_vars, the `ray up`
# cluster (configs/cluster/ray-2node-8gpu.yaml) leaves the same folders out of the repo it syncs, and
# tests/test_runtime_env.py fails when any of them drifts from these two constants.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    # gitignore syntax, relative to the working dir (a leading / anchors to its top). Ray also honours
    # the working dir's .gitignore and .rayignore files.
    "/runs/", "/.venv/", "/venv/", "/.git/", "/models/", "/lvr1-store/", "/mlruns/", "/demo/",
    "/.gpu_wheels/", "/build/", "/dist/", "__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/",
    ".hypothesis/",
)
DEFAULT_ENV = {"PYTHONUNBUFFERED": "1"}   # stream the job's prints as they happen
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
START_HINT = ("start one with `ray start --head --dashboard-host 127.0.0.1` (its dashboard listens on "
              "127.0.0.1:8265), or give --address http://HEAD:8265 (for a remote head, tunnel it: "
              "ssh -L 8265:127.0.0.1:8265 HEAD)")
TOKEN_HINT = ("put the cluster's token (`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN or in a "
              "file named by RAY_AUTH_TOKEN_PATH (default ~/.ray/auth_token)")
_ADDRESS_VARS = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
_QUIET_LOGGERS = ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk",
                  "ray.dashboard.modules.job.sdk", "ray.dashboard.utils")


@dataclass
class JobResult:
    """What became of a submitted job."""

    job_id: str
    status: str
    """SUCCEEDED, FAILED or STOPPED when followed to the end; PENDING or RUNNING with ``wait=False``"""
    address: str
    message: str = ""
    logs: list[str] = field(default_factory=list, repr=False)
    """the log chunks streamed while following (also written to ``out``)"""

    @property
    def exit_code(self) -> int:
        return 0 if self.status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


# ----------------------------------------------------------------------------------- pieces


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    """``["KEY=VALUE", …]`` -> dict; InputError on a pair without ``=`` or with a bad name."""
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise InputError(f"--env {pair!r}: write it as NAME=VALUE, e.g. --env HF_HOME=/shared/hf")
        env[key] = value
    return env


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def job_path(path: str, working_dir: str | Path = ".", cwd: str | Path | None = None) -> str:
    """The path the job (running in the uploaded working dir) must use for ``path`` given here.

    A file under the working dir becomes relative to it; an absolute path that does not exist here
    is taken as a path on the cluster (a shared filesystem) and passed on unchanged.
    """
    root = Path(working_dir).resolve()
    local = Path(cwd or os.getcwd(), path).resolve() if not Path(path).is_absolute() else Path(path)
    if local.exists():
        if _inside(local.resolve(), root):
            return local.resolve().relative_to(root).as_posix()
        if Path(path).is_absolute():
            print(f"lvr1 submit: note: {path} lies outside the working dir {root}; it must exist at the same "
                  "path on the cluster's head node", file=sys.stderr)
            return path
        raise InputError(f"config {path}: it lies outside the working dir {root}, so it would not travel with "
                         "the job; move it under the working dir, or give an absolute path that exists on the "
                         "cluster")
    if Path(path).is_absolute():
        return path
    raise InputError(f"config {path}: no such file here; give a config under the working dir {root} "
                     "(e.g. configs/demo-cpu.yaml), or an absolute path that exists on the cluster")


def check_corpus_paths(config) -> None:
    """A folder corpus must be where every node reads it: its videos and annotations are not uploaded
    with the working dir (they would exceed any upload limit), so their paths must be absolute paths
    on storage the cluster's nodes share."""
    c = config.corpus
    if c.source != "folder":
        return
    for key in ("path", "annotations"):
        value = getattr(c, key)
        if not Path(value).is_absolute():
            raise InputError(f"config key corpus.{key}: {value!r} is relative; a Ray job runs in an uploaded copy of "
                             "the working dir without your videos, so give an absolute path on storage every node "
                             "mounts (e.g. /shared/cgbench/videos)")
        if not Path(value).exists():
            print(f"lvr1 submit: note: corpus.{key} {value} is not on this machine; it must exist at that path on "
                  "the cluster's nodes", file=sys.stderr)


def pipeline_entrypoint(config: str | list[str] | None = None, overrides: list[str] | None = None,
                        working_dir: str | Path = ".") -> str:
    """The shell command ``lvr1 pipeline --config … --set …`` for the job, each argument quoted;
    ``config`` is one file or a list of them (passed on in order: later files win)."""
    args = ["lvr1", "pipeline"]
    for path in [config] if isinstance(config, (str, Path)) else config or []:
        args += ["--config", job_path(path, working_dir)]
    for override in overrides or []:
        if "=" not in override:
            raise InputError(f"--set {override!r}: write it as key.path=value, e.g. --set corpus.videos=2")
        args += ["--set", override]
    return shlex.join(args)


def runtime_env(working_dir: str | Path = ".", env: dict[str, str] | None = None,
                excludes: list[str] | tuple[str, ...] = ()) -> dict:
    """The job's runtime environment: the working dir (minus :data:`DEFAULT_EXCLUDES` and ``excludes``)
    and the environment variables (:data:`DEFAULT_ENV`, then ``env``)."""
    root = Path(working_dir)
    if not root.is_dir():
        raise InputError(f"--working-dir {working_dir}: not a folder; give the repo root (default .)")
    out = {"working_dir": str(root.resolve()), "excludes": list(DEFAULT_EXCLUDES) + list(excludes)}
    variables = {**DEFAULT_ENV, **(env or {})}
    leaked = sorted(k for k in variables if k.startswith("RAY_AUTH"))
    if leaked:
        raise InputError(f"--env {', '.join(leaked)}: the token must not travel in the job's runtime "
                         "environment (it is stored with the job); the cluster has its own")
    out["env_vars"] = variables
    return out


def resolve_token() -> tuple[str | None, str]:
    """The cluster token and where it came from, in Ray's order of precedence (None: no token).

    ``RAY_AUTH_MODE=disabled`` -> no token; else ``RAY_AUTH_TOKEN``; else the file named by
    ``RAY_AUTH_TOKEN_PATH`` (which must be readable, as Ray requires); else ``~/.ray/auth_token``.
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None, "RAY_AUTH_MODE=disabled"
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise InputError(f"RAY_AUTH_TOKEN_PATH={path}: cannot be read ({exc.strerror}); point it at the "
                             "cluster's token file or unset it") from None
        if not token:
            raise InputError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty; {TOKEN_HINT}")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    try:
        token = default.read_text().strip()
    except OSError:
        return None, "no token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token are unset or missing)"
    return (token, str(default)) if token else (None, f"{default} is empty")


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``RAY_API_SERVER_ADDRESS``, else an http(s) ``RAY_ADDRESS``, else 127.0.0.1:8265."""
    if not address:
        address = os.environ.get("RAY_API_SERVER_ADDRESS") or ""
        ray_address = os.environ.get("RAY_ADDRESS", "")
        if not address and ray_address.startswith(("http://", "https://")):
            address = ray_address
        address = address or DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


@contextlib.contextmanager
def _env_without(names):
    """Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the client's address argument; hide them."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _quiet_ray():
    """Ray logs every ignored file and websocket close at INFO; keep our output to what matters."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def connect(address: str | None = None, token: str | None = None):
    """A ``JobSubmissionClient`` for the dashboard at ``address``, authenticated; InputError if none answers.

    ``token`` overrides the resolved one (see :func:`resolve_token`).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    source = "the token argument"
    if token is None:
        token, source = resolve_token()
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        with _env_without(_ADDRESS_VARS), _quiet_ray():
            return JobSubmissionClient(address, headers=headers)
    except ConnectionError:
        raise InputError(f"no Ray cluster answers at {address}: {START_HINT}") from None
    except AuthenticationError as exc:
        text = str(exc)
        if "Forbidden" in text or "failed" in text.split(":")[0]:
            raise InputError(f"the Ray cluster at {address} rejected the token from {source}; {TOKEN_HINT}") from None
        raise InputError(f"the Ray cluster at {address} needs a token and none was found ({source}); "
                         f"{TOKEN_HINT}") from None
    except RuntimeError as exc:
        raise InputError(f"{address} answered but not as a Ray dashboard with the job API "
                         f"({_one_line(exc)[:200]}); give the dashboard's URL, e.g. {DEFAULT_ADDRESS}") from None


# ----------------------------------------------------------------------------------- submit and follow


def submit(entrypoint: str, address: str | None = None, working_dir: str | Path = ".",
           env: dict[str, str] | None = None, excludes: list[str] | tuple[str, ...] = (), wait: bool = True,
           token: str | None = None, submission_id: str | None = None, metadata: dict[str, str] | None = None,
           out: TextIO | None = None, poll_s: float = 1.0) -> JobResult:
    """Submit ``entrypoint`` (a shell command run in the uploaded working dir) as a Ray job.

    With ``wait`` the job's logs are streamed to ``out`` (default stdout) until it ends and the final
    status is returned; without, the result carries the id and the status right after submission.
    A KeyboardInterrupt while following stops following, not the job (a note says how to stop it).
    """
    out = out or sys.stdout
    env_spec = runtime_env(working_dir, env, excludes)
    client = connect(address, token)
    address = resolve_address(address)
    print(f"lvr1 submit: uploading {env_spec['working_dir']} to {address} and starting: {entrypoint}",
          file=sys.stderr, flush=True)
    try:
        with _quiet_ray():
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=env_spec, submission_id=submission_id,
                                       metadata={"lvr1": "submit", **(metadata or {})})
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"the Ray cluster at {address} refused the job: {_one_line(exc)[:300]}") from None
    if not wait:
        status = str(client.get_job_status(job_id).value)
        print(f"lvr1 submit: job {job_id} submitted ({status}); follow it with "
              f"`ray job logs --address {address} --follow {job_id}`, stop it with "
              f"`ray job stop --address {address} {job_id}`", file=sys.stderr, flush=True)
        return JobResult(job_id, status, address)
    print(f"lvr1 submit: job {job_id} submitted; following its logs (Ctrl-C stops following, not the job)",
          file=sys.stderr, flush=True)
    result = JobResult(job_id, "RUNNING", address)
    try:
        follow(client, job_id, out, result.logs, poll_s)
    except KeyboardInterrupt:
        print(f"\nlvr1 submit: stopped following; job {job_id} keeps running: "
              f"`ray job logs --address {address} --follow {job_id}` follows it again, "
              f"`ray job stop --address {address} {job_id}` stops it", file=sys.stderr, flush=True)
        raise
    info = client.get_job_info(job_id)
    result.status, result.message = str(info.status.value), info.message or ""
    return result


def follow(client, job_id: str, out: TextIO, logs: list[str] | None = None, poll_s: float = 1.0) -> str:
    """Write the job's logs to ``out`` as they come until it ends; return its final status."""
    logs = logs if logs is not None else []

    def emit(chunk: str) -> None:
        logs.append(chunk)
        out.write(chunk)
        out.flush()

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            emit(chunk)

    written = 0
    try:
        with _quiet_ray(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # aiohttp on Ray's ws_connect(ssl=None)
            asyncio.run(tail())
        written = sum(len(c) for c in logs)
    except (RuntimeError, OSError) as exc:   # the websocket broke (a proxy, a restart): poll instead
        print(f"lvr1 submit: log stream interrupted ({_one_line(exc)[:120]}); polling", file=sys.stderr)
        written = sum(len(c) for c in logs)
    while True:
        status = str(client.get_job_status(job_id).value)
        text = client.get_job_logs(job_id)
        if len(text) > written:
            emit(text[written:])
            written = len(text)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
