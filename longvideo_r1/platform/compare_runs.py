"""``lvr1 runs compare``: pipeline runs side by side, from any MLflow tracking store.

    lvr1 runs compare                                  # latest 5 parent runs, default output dir
    lvr1 runs compare --output-dir runs/demo-cpu       # the SQLite store of that run folder
    lvr1 runs compare RUN_A RUN_B --uri http://127.0.0.1:5000 --metrics sft/loss,grpo/reward --min-max
    lvr1 runs compare --json                           # the same, as one JSON object

A parent (pipeline) run shows its own metrics and those of its stage runs as ``<stage>/<metric>``.
A stage that ran more than once (resumed after Ctrl-C) has one nested run per attempt: the last
value is the latest attempt's, min and max span all attempts.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sys
from pathlib import Path

from longvideo_r1.errors import InputError

MAX_RUNS = 5
CELL_WIDTH = 24
KEY_WIDTH = 40
DEFAULT_MAX_METRICS = 40
DEFAULT_MAX_PARAMS = 20
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


# --------------------------------------------------------------------------------------------------
# Opening the store


def open_store(uri: str | None, output_dir: str | None, experiment: str | None):
    """(client, tracking URI, experiment) for the command-line choices; every failure is an InputError."""
    from longvideo_r1.platform import tracking

    record = {}
    if output_dir:
        out = Path(output_dir)
        if not out.is_dir():
            raise InputError(f"--output-dir {output_dir}: no such folder")
        try:
            record = json.loads((out / tracking.RECORD_FILE).read_text())
        except (OSError, ValueError):
            record = {}
        uri = record.get("tracking_uri") or f"sqlite:///{(out / tracking.DEFAULT_DB).resolve()}"
    elif not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            from longvideo_r1.platform.config import PipelineConfig

            default = PipelineConfig().output_dir
            if not Path(default).is_dir():
                raise InputError(f"no tracking store given and the default output dir {default} does not exist "
                                 "here; give --output-dir DIR or --uri URI (or set MLFLOW_TRACKING_URI)")
            return open_store(None, default, experiment)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise InputError(f"tracking store {uri}: no such database ({db}); run `lvr1 pipeline` with tracking "
                         "enabled first, or give --uri / --output-dir")
    tracking.check_server(uri, advice="give another --uri (or fix MLFLOW_TRACKING_URI)")
    mlflow = tracking.import_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=uri)
    name = experiment or record.get("experiment") or tracking.TrackingConfig().experiment
    try:
        found = client.get_experiment_by_name(name)
        if found is None or found.lifecycle_stage != "active":
            names = sorted(e.name for e in client.search_experiments())
            raise InputError(f"experiment {name!r} not found at {uri}; experiments there: "
                             f"{', '.join(names) or 'none'} (choose one with --experiment)")
    except MlflowException as exc:
        raise InputError(f"tracking store {uri}: {str(exc).splitlines()[0][:300]}") from None
    return client, uri, found


def all_runs(client, experiment_id: str, cap: int = 10000) -> list:
    """Every active run of the experiment, newest first."""
    runs, token = [], None
    while len(runs) < cap:
        page = client.search_runs([experiment_id], max_results=min(1000, cap - len(runs)),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def resolve_runs(client, experiment, wanted: list[str], limit: int = MAX_RUNS) -> list:
    """Runs named by id, unique id prefix (≥ 6 characters) or name (the newest of that name); with no
    names, the newest ``limit`` parent runs."""
    from mlflow.exceptions import MlflowException

    from longvideo_r1.platform.tracking import PARENT_TAG

    runs = all_runs(client, experiment.experiment_id)
    if not runs:
        raise InputError(f"experiment {experiment.name!r} has no runs yet; run `lvr1 pipeline` with tracking "
                         "enabled first")
    if not wanted:
        return [r for r in runs if PARENT_TAG not in r.data.tags][:limit] or runs[:limit]
    chosen = []
    for key in wanted:
        match = None
        if _RUN_ID.match(key):
            try:
                match = client.get_run(key)
            except MlflowException:
                match = None
        if match is None:
            named = [r for r in runs if r.info.run_name == key]
            parents = [r for r in named if PARENT_TAG not in r.data.tags]
            match = (parents or named or [None])[0]
        if match is None and len(key) >= 6:
            prefixed = [r for r in runs if r.info.run_id.startswith(key.lower())]
            if len(prefixed) > 1:
                raise InputError(f"run {key}: the id prefix matches {len(prefixed)} runs; give more characters")
            match = prefixed[0] if prefixed else None
        if match is None:
            raise InputError(f"run {key}: no run with that id or name in experiment {experiment.name!r}; "
                             "`lvr1 runs compare` without names lists the latest runs")
        chosen.append(match)
    return chosen


# --------------------------------------------------------------------------------------------------
# Collecting and printing


def run_metrics(client, run) -> dict[str, list[tuple]]:
    """metric key shown -> the runs holding it, oldest first, each as (run, its key there): the run's
    own metrics and, for a parent run, its stages' metrics as ``<stage>/<key>`` (one holder per
    attempt of a stage that ran more than once)."""
    from longvideo_r1.platform.tracking import PARENT_TAG, STAGE_TAG

    keys: dict[str, list[tuple]] = {k: [(run, k)] for k in run.data.metrics}
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = "
                                  f"'{run.info.run_id}'", max_results=1000,
                                  order_by=["attributes.start_time ASC"])
    for child in children:
        stage = child.data.tags.get(STAGE_TAG) or child.info.run_name
        for k in child.data.metrics:
            keys.setdefault(f"{stage}/{k}", []).append((child, k))
    return keys


def _number(value):
    """A metric value for JSON: NaN and ±inf as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _iso(ms) -> str | None:
    if not ms:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def _seconds(info) -> float | None:
    if not info.start_time:
        return None
    end = info.end_time or dt.datetime.now(dt.timezone.utc).timestamp() * 1000
    return round(max(0.0, (end - info.start_time) / 1000), 1)


def compare_data(client, runs: list, metrics: list[str] | None = None, params: list[str] | None = None,
                 min_max: bool = False) -> dict:
    """What the comparison shows, as plain data: ``{"metrics": [keys], "params": [keys], "runs": [{"run_id",
    "name", "status", "start_time", "end_time", "duration_s", "params", "metrics"[, "min", "max"]}]}``;
    a metric a run lacks is left out of its mapping."""
    metric_maps = [run_metrics(client, run) for run in runs]
    if metrics:
        missing = [m for m in metrics if not any(m in keys for keys in metric_maps)]
        if missing:
            known = sorted(set().union(*metric_maps))
            raise InputError(f"--metrics: no run has {', '.join(missing)}; metrics there: "
                             f"{', '.join(known[:30]) or 'none'}{' …' if len(known) > 30 else ''}")
        metric_keys = list(metrics)
    else:
        metric_keys = sorted(set().union(*metric_maps))[:DEFAULT_MAX_METRICS]
    if params:
        param_keys = list(params)
    else:
        every = sorted(set().union(*(r.data.params for r in runs)))
        if len(runs) > 1:
            param_keys = [k for k in every if len({r.data.params.get(k) for r in runs}) > 1]
        else:
            param_keys = [k for k in every if not k.startswith("system.")]
        param_keys = param_keys[:DEFAULT_MAX_PARAMS]

    out = []
    for run, keys in zip(runs, metric_maps):
        entry = {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                 "start_time": _iso(run.info.start_time), "end_time": _iso(run.info.end_time),
                 "duration_s": _seconds(run.info),
                 "params": {k: run.data.params[k] for k in param_keys if k in run.data.params},
                 "metrics": {}}
        if min_max:
            entry["min"], entry["max"] = {}, {}
        for key in metric_keys:
            holders = keys.get(key)
            if not holders:
                continue
            holder, name = holders[-1]
            entry["metrics"][key] = _number(holder.data.metrics.get(name))
            if min_max:
                history = [m.value for h, n in holders for m in client.get_metric_history(h.info.run_id, n)]
                if history:
                    entry["min"][key], entry["max"][key] = _number(min(history)), _number(max(history))
        out.append(entry)
    return {"metrics": metric_keys, "params": param_keys, "runs": out}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".6g")
    return str(value)


def _cell(text: str, width: int) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def _when(iso: str | None) -> str:
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M") if iso else "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def render_table(data: dict, min_max: bool = False) -> str:
    """The Markdown table of :func:`compare_data`: one column per run, rows for the run, its params
    and its metrics."""
    runs = data["runs"]
    rows: list[tuple[str, list[str]]] = [
        ("run id", [r["run_id"][:8] for r in runs]),
        ("status", [r["status"] for r in runs]),
        ("started (UTC)", [_when(r["start_time"]) for r in runs]),
        ("duration", [_duration(r["duration_s"]) for r in runs]),
    ]
    for key in data["params"]:
        rows.append((f"param {key}", [r["params"].get(key, "-") for r in runs]))
    for key in data["metrics"]:
        rows.append((key, [_fmt(r["metrics"].get(key)) for r in runs]))
        if min_max:
            rows.append((f"{key} (min)", [_fmt(r["min"].get(key)) for r in runs]))
            rows.append((f"{key} (max)", [_fmt(r["max"].get(key)) for r in runs]))

    headers = [r["name"] or r["run_id"][:8] for r in runs]
    key_width = min(KEY_WIDTH, max(len("field"), *(len(k) for k, _ in rows)))
    widths = [min(CELL_WIDTH, max(len(_cell(h, CELL_WIDTH)), *(len(_cell(v[i], CELL_WIDTH)) for _, v in rows)))
              for i, h in enumerate(headers)]

    def line(first: str, cells: list[str]) -> str:
        parts = [_cell(first, key_width).ljust(key_width)]
        parts += [_cell(c, w).ljust(w) for c, w in zip(cells, widths)]
        return "| " + " | ".join(parts) + " |"

    out = [line("field", headers), "|" + "|".join("-" * (w + 2) for w in [key_width, *widths]) + "|"]
    out += [line(k, v) for k, v in rows]
    return "\n".join(out)


def compare_table(client, runs: list, metrics: list[str] | None = None, params: list[str] | None = None,
                  min_max: bool = False) -> str:
    """The Markdown table comparing ``runs`` (see :func:`compare_data` and :func:`render_table`)."""
    return render_table(compare_data(client, runs, metrics, params, min_max), min_max)


# --------------------------------------------------------------------------------------------------
# The command


def _split(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    return [x.strip() for x in raw.split(",") if x.strip()] or None


def _cmd_compare(args) -> int:
    client, uri, experiment = open_store(args.uri, args.output_dir, args.experiment)
    if args.limit < 1:
        raise InputError("--limit: give a positive number of runs")
    runs = resolve_runs(client, experiment, args.runs, args.limit)
    data = compare_data(client, runs, _split(args.metrics), _split(args.params), args.min_max)
    out = getattr(args, "stdout", None) or sys.stdout
    if args.json:
        data = {"experiment": experiment.name, "experiment_id": experiment.experiment_id, "tracking_uri": uri,
                **data}
        print(json.dumps(data, ensure_ascii=False), file=out)
        return 0
    print(f"experiment {experiment.name!r} at {uri}", file=out)
    print(render_table(data, args.min_max), file=out)
    return 0


def add_commands(sub) -> None:
    runs = sub.add_parser("runs", help="MLflow runs of the pipeline").add_subparsers(
        dest="runs_command", required=True)
    p = runs.add_parser("compare", help="print chosen metrics (last value) and params of runs side by side",
                        description="Compare pipeline runs tracked in MLflow. A parent (pipeline) run shows its "
                        "stages' metrics as STAGE/METRIC. Store: --uri, else --output-dir, else "
                        "MLFLOW_TRACKING_URI, else the default output dir's sqlite store.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help=f"run id (or a unique prefix) or run name; default: the latest {MAX_RUNS} pipeline runs")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 or sqlite:///runs/x/mlflow.db")
    where.add_argument("--output-dir", help="a pipeline output dir (its mlflow_run.json / mlflow.db)")
    p.add_argument("--experiment", help="experiment name (default: the output dir's, else longvideo-r1)")
    p.add_argument("--metrics", metavar="M1,M2", help="metrics to show (default: all, up to "
                   f"{DEFAULT_MAX_METRICS})")
    p.add_argument("--params", metavar="P1,P2", help="params to show (default: those that differ between "
                   f"the runs, up to {DEFAULT_MAX_PARAMS})")
    p.add_argument("--min-max", action="store_true", help="also show each metric's min and max over its history")
    p.add_argument("--limit", type=int, default=MAX_RUNS, help=f"runs shown by default (default {MAX_RUNS})")
    p.add_argument("--json", action="store_true", help="print one JSON object (experiment, tracking_uri, the "
                   "params and metrics shown, and per run its id, name, status, times, params, last metric "
                   "values and with --min-max their min and max) instead of the table")
    p.set_defaults(func=_cmd_compare)


__all__ = ["add_commands", "compare_data", "compare_table", "render_table", "open_store", "resolve_runs",
           "run_metrics"]
