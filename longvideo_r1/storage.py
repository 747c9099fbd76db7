"""Where a run's data lives: local paths, or object stores and shared filesystems through pyarrow's
filesystems (``s3://bucket/key``, ``gs://bucket/key``, ``hdfs://…``, ``file:///…``).

Credentials and endpoints come from the usual places of each store, never from the config: for S3
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION`` and, for an S3-compatible
server (MinIO, Ceph), ``AWS_ENDPOINT_URL``; for GCS the application-default credentials. A URI may
also carry pyarrow's options as a query (``s3://bucket/run?endpoint_override=host:9000&scheme=http``).

What lives where:
- the caption store is read in place (manifest and shards through the filesystem) by every reader,
  on any node, so rollout workers never need the head's disk;
- a video or subtitle file named by a URI is copied once per node into a local cache
  (:func:`local_file`), since decord opens local files;
- a run with ``storage.uri`` works in its local ``output_dir`` and publishes each finished stage
  there (:func:`push`); a rerun on a fresh machine first pulls what was published (:func:`pull`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from longvideo_r1.errors import InputError

SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "file")
CACHE_ENV = "LVR1_CACHE_DIR"
"""local folder for copies of remote files (default ~/.cache/lvr1)"""


@dataclass
class StorageConfig:
    """Where the run's artifacts live beyond this machine."""

    publish_every_s: float = 600.0
    """while a stage runs, publish what changed this often (a long RL stage's checkpoints reach the
    storage as they are saved); 0: only when a stage finishes"""
    uri: str | None = None
    """None: everything stays in output_dir. A URI (s3://bucket/runs/NAME, gs://…, or a folder every
    node mounts): each finished stage (corpus, caption store, data, checkpoints, models, evaluation)
    is published there, rollout workers read the caption store from there, and a rerun on a fresh
    machine first pulls what is there (a run that lost its machine continues where it stopped)"""


def is_uri(path) -> bool:
    """Whether ``path`` names a filesystem by scheme (``s3://…``), not a local path."""
    text = str(path)
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


def join(base: str, *parts: str) -> str:
    """``base/part/…`` for a URI (keeping its query) or a local path."""
    if not is_uri(base):
        return str(Path(base, *parts))
    split = urlsplit(base)
    path = "/".join([split.path.rstrip("/")] + [p.strip("/") for p in parts])
    return f"{split.scheme}://{split.netloc}{path}" + (f"?{split.query}" if split.query else "")


def _explain(uri: str, exc: Exception) -> str:
    text = str(exc).splitlines()[0][:240] if str(exc) else type(exc).__name__
    hint = ""
    low = text.lower()
    if "no_such_bucket" in low or "nosuchbucket" in low or "bucket does not exist" in low:
        hint = "; create the bucket first"
    elif "access denied" in low or "credentials" in low or "forbidden" in low or "invalidaccesskey" in low:
        hint = "; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or GCS application-default)"
    elif "connect" in low or "curl" in low or "resolve" in low or "timeout" in low:
        hint = "; check that the endpoint is reachable from this node (AWS_ENDPOINT_URL for an S3-compatible server)"
    return f"{uri}: {text}{hint}"


def filesystem(uri: str):
    """``(pyarrow FileSystem, path inside it)`` for a URI or a local path."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(str(uri))
    except (OSError, ValueError) as exc:     # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"storage {_explain(uri, exc)}") from None


def _call(uri: str, what: str, fn, *args):
    import pyarrow as pa

    try:
        return fn(*args)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"storage: cannot {what} {_explain(uri, exc)}") from None


def info(uri: str):
    """pyarrow ``FileInfo`` of ``uri`` (its ``type`` is NotFound when nothing is there)."""
    fs, path = filesystem(uri)
    return _call(uri, "look up", fs.get_file_info, path)


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    return info(uri).type != pafs.FileType.NotFound


def readable(uri: str) -> bool:
    """Whether this process can open ``uri`` (a local path: ``os.access``; a URI: it exists and can
    be looked up with this node's credentials); never raises."""
    if not is_uri(uri):
        return os.access(uri, os.R_OK)
    try:
        return exists(uri)
    except InputError:
        return False


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise FileNotFoundError(uri) from None
        raise InputError(f"storage: cannot read {_explain(uri, exc)}") from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object (object stores publish it atomically; a local file goes through a rename)."""
    if not is_uri(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri)

    def put():
        with fs.open_output_stream(path) as f:
            f.write(data)
    _call(uri, "write", put)


def listing(uri: str) -> dict[str, int]:
    """``relative path -> size`` of every file under ``uri`` (empty when nothing is there)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    top = _call(uri, "look up", fs.get_file_info, path)
    if top.type == pafs.FileType.NotFound:
        return {}
    if top.type == pafs.FileType.File:
        return {"": top.size}
    infos = _call(uri, "list", fs.get_file_info, pafs.FileSelector(path, recursive=True))
    prefix = path.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in infos if i.type == pafs.FileType.File}


def _copy(src_fs, src: str, dst_fs, dst: str) -> None:
    import pyarrow.fs as pafs

    pafs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=False)


LAST = ("manifest.json", "stages.json", "latest", "summary.json")
"""files published after every other file of their folder: what points at the others"""
LEDGER = ".published.json"


def _stamp(path: Path) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _local_files(local: Path) -> dict[str, Path]:
    """The files a folder publishes: not links (a folder corpus links the user's videos), not hidden
    files (locks, temporaries, the ledger)."""
    found = {}
    for path in sorted(local.rglob("*")):
        rel = path.relative_to(local)
        if any(part.startswith(".") for part in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        if any(parent.is_symlink() for parent in path.parents if local in parent.parents):
            continue
        found[rel.as_posix()] = path
    return found


def _ledger(local: Path, uri: str) -> dict:
    import json

    path = local / LEDGER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if data.get("uri") != uri:
        data = {"uri": uri, "files": {}}
    return data


def _save_ledger(local: Path, data: dict) -> None:
    import json

    tmp = local / f"{LEDGER}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, local / LEDGER)


def publish(local: str | Path, uri: str, skip_suffixes: tuple[str, ...] = ()) -> dict:
    """Mirror the local folder ``local`` at ``uri``: upload the files that changed since the last
    publish (size or modification time, kept in ``local/.published.json``), the files that point at
    others (:data:`LAST`: manifests, ``stages.json``, a checkpoint's ``latest``) after the rest, and
    delete there what this folder published before and no longer has (pruned checkpoints). Files
    ending in ``skip_suffixes`` wait for a later call. Returns ``{"files", "bytes", "deleted"}``."""
    import pyarrow.fs as pafs

    local = Path(local)
    if not local.is_dir():
        return {"files": 0, "bytes": 0, "deleted": 0}
    ledger = _ledger(local, uri)
    files = _local_files(local)
    changed = [rel for rel, path in files.items()
               if ledger["files"].get(rel) != _stamp(path) and not rel.endswith(skip_suffixes)]
    changed.sort(key=lambda rel: rel.rsplit("/", 1)[-1] in LAST)
    fs, root = filesystem(uri)
    local_fs = pafs.LocalFileSystem()
    sent = 0
    for rel in list(changed):
        path = files[rel]
        try:
            stamp = _stamp(path)
            _call(uri, f"upload {path} to", _copy, local_fs, str(path.absolute()), fs, f"{root.rstrip('/')}/{rel}")
        except FileNotFoundError:       # removed while publishing (a checkpoint pruned): gone below
            files.pop(rel)
            changed.remove(rel)
            continue
        ledger["files"][rel] = stamp
        sent += stamp[0]
    gone = [rel for rel in ledger["files"] if rel not in files and not rel.endswith(skip_suffixes)]
    for rel in gone:
        try:
            fs.delete_file(f"{root.rstrip('/')}/{rel}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InputError(f"storage: cannot delete {_explain(join(uri, rel), exc)}") from None
        del ledger["files"][rel]
    _save_ledger(local, ledger)
    return {"files": len(changed), "bytes": sent, "deleted": len(gone)}


class Publisher:
    """Publishes ``local`` at ``uri`` every ``every_s`` seconds from a thread while a stage runs; a
    failed upload is logged and retried at the next turn. SQLite files (MLflow's ``mlflow.db``) wait
    for the publish at the stage's end: a copy taken mid-transaction could be torn."""

    SKIP = (".db", ".db-journal", ".db-wal", ".db-shm")

    def __init__(self, local: str | Path, uri: str, every_s: float, log=None):
        import threading

        self.local, self.uri, self.every_s, self.log = Path(local), uri, every_s, log
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lvr1-publisher", daemon=True)
        self.turns = 0

    def __enter__(self) -> "Publisher":
        if self.every_s > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.publish()
            except InputError as exc:
                if self.log:
                    self.log(f"publishing failed, retried in {self.every_s:.0f} s: {exc}")

    def publish(self) -> dict:
        with self._lock:
            self.turns += 1
            return publish(self.local, self.uri, skip_suffixes=self.SKIP)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def restore(uri: str, local: str | Path) -> dict:
    """Copy into ``local`` what is published at ``uri`` and missing here (a run continuing on a fresh
    machine); files already here are kept (this machine's are newer). Returns ``{"files", "bytes"}``."""
    import pyarrow.fs as pafs

    local = Path(local)
    there = listing(uri)
    fs, root = filesystem(uri)
    ledger = _ledger(local, uri) if local.is_dir() else {"uri": uri, "files": {}}
    got = count = 0
    for rel, size in sorted(there.items()):
        dst = local / rel
        if not rel or dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        _call(uri, "download", _copy, fs, f"{root.rstrip('/')}/{rel}", pafs.LocalFileSystem(), str(tmp.absolute()))
        os.replace(tmp, dst)
        ledger["files"][rel] = _stamp(dst)
        got += size
        count += 1
    if count:
        _save_ledger(local, ledger)
    return {"files": count, "bytes": got}


def mirror_folder(uri: str, local: str | Path) -> dict[str, str]:
    """Make ``local`` a folder of links to this node's cached copies of the files directly in the
    folder ``uri`` (a video folder or an annotation folder in an object store); returns
    ``{file name: its URI}``."""
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    names = {}
    for rel in sorted(listing(uri)):
        if not rel or "/" in rel:
            continue
        source = join(uri, rel)
        cached = local_file(source)
        link = local / rel
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(cached)
        names[rel] = source
    return names


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lvr1")


def local_file(path) -> Path:
    """A local path to read ``path`` from: itself when local; for a URI a copy in this node's cache
    (``$LVR1_CACHE_DIR/files``), downloaded once and kept while its size matches the source."""
    if not is_uri(path):
        return Path(path)
    uri = str(path)
    found = info(uri)
    import pyarrow.fs as pafs

    if found.type != pafs.FileType.File:
        raise InputError(f"storage {uri}: no such file; check the path (and the credentials of this node)")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
    dst = cache_dir() / "files" / digest / name
    if dst.is_file() and dst.stat().st_size == found.size:
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fs, src = filesystem(uri)
    _call(uri, "download", _copy, fs, src, pafs.LocalFileSystem(), str(tmp.absolute()))
    os.replace(tmp, dst)
    return dst
