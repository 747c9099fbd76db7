"""The `lvr1` command line: JSON on stdout, and one-line errors with a non-zero exit for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_store import build, make_video


def lvr1(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "longvideo_r1.platform.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "store"
    build(root, [make_video("vid_a", 3000), make_video("vid_b", 9000)], shards=2)
    return root


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lvr1: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_captions_get_prints_one_json_object(store):
    result = lvr1("captions", "get", store, "vid_a", 2, 3)
    assert result.returncode == 0, result.stderr
    obj = json.loads(result.stdout)
    assert set(obj) == {"video_id", "ids", "level", "start", "end", "caption"}
    assert obj["ids"] == [2, 3] and obj["level"] == "medium" and obj["caption"] == "vid_a medium (2, 3)"
    assert obj["start"] <= obj["end"]


def test_captions_stats_counts_levels(store):
    result = lvr1("captions", "stats", store)
    stats = json.loads(result.stdout)
    assert stats["videos"] == 2 and stats["num_shards"] == 2
    widths = [make_video(v, n)[0].width for v, n in (("vid_a", 3000), ("vid_b", 9000))]
    assert stats["per_level"] == {"high": sum(widths), "medium": sum(w ** 2 for w in widths),
                                  "low": sum(w ** 3 for w in widths)}


@pytest.mark.parametrize("args, needles", [
    (("captions", "get", "{store}", "nope", "1"), ("nope", "not in caption store")),
    (("captions", "get", "{store}", "vid_a", "1", "9"), ("ids run from 1 to",)),
    (("captions", "get", "{store}", "vid_a", "x"), ("give 1 to 3 integers",)),
    (("captions", "get", "{store}", "../../etc", "1"), ("not allowed",)),
    (("captions", "get", "/nonexistent/store", "vid_a", "1"), ("/nonexistent/store", "no manifest.json")),
    (("captions", "stats", "/nonexistent/store"), ("no manifest.json",)),
    (("captions", "build", "--videos", "/nonexistent/videos", "--out", "{tmp}/s"), ("/nonexistent/videos",)),
    (("captions", "build", "--videos", "{tmp}", "--out", "{tmp}/s", "--captioner", "openai"), ("--endpoint",)),
    (("captions", "import", "--upstream-json", "/nonexistent/json", "--out", "{tmp}/s"), ("not a directory",)),
    (("pipeline", "--config", "/nonexistent.yaml"), ("/nonexistent.yaml", "cannot be read")),
    (("pipeline", "--set", "corpus.vidoes=3"), ("corpus.vidoes", "unknown key")),
    (("pipeline", "--set", "captions.workers=many"), ("captions.workers", "not a int")),
])
def test_bad_input_is_one_line_error_without_traceback(store, tmp_path, args, needles):
    args = [a.format(store=store, tmp=tmp_path) for a in args]
    assert_one_line_error(lvr1(*args), *needles)


def test_a_corrupt_shard_is_reported_by_name(tmp_path):
    root = tmp_path / "store"
    build(root, [make_video("vid_a", 3000)], shards=1)
    manifest = json.loads((root / "manifest.json").read_text())
    shard_file = root / manifest["shards"]["000"]["captions"]
    shard_file.write_bytes(b"not parquet at all")
    assert_one_line_error(lvr1("captions", "get", root, "vid_a", 1), str(shard_file), "corrupt")


# ====================================================================== lvr1 config, repeated --config

REPO = Path(__file__).resolve().parents[1]


def write_yaml(path, text):
    path.write_text(text)
    return path


def test_config_prints_yaml_that_loads_back_to_the_same_config(tmp_path, capsys):
    from longvideo_r1.platform.config import load_config

    demo = REPO / "configs" / "demo-cpu.yaml"
    sets = ["rl.steps=2", "sft.learner.lr=3.0e-4", "name=printed"]
    result = lvr1("config", "--config", demo, *(a for s in sets for a in ("--set", s)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("name: printed\n")                 # YAML in the dataclasses' order
    printed = write_yaml(tmp_path / "printed.yaml", result.stdout)
    assert load_config(printed) == load_config(demo, sets)
    assert printed_config(capsys, "--config", printed) == result.stdout          # a fixed point


def printed_config(capsys, *argv) -> str:
    from longvideo_r1.platform.cli import main

    capsys.readouterr()
    assert main(["config", *map(str, argv)]) == 0
    return capsys.readouterr().out


def test_later_config_files_win_key_by_key_and_set_wins_over_all(tmp_path, capsys):
    import yaml

    base = write_yaml(tmp_path / "cluster.yaml", "corpus:\n  videos: 3\n  seed: 7\ncaptions:\n  workers: 4\n")
    exp = write_yaml(tmp_path / "experiment.yaml", "corpus:\n  videos: 5\nname: exp\n")
    merged = yaml.safe_load(printed_config(capsys, "--config", base, "--config", exp))
    assert merged["corpus"]["videos"] == 5 and merged["corpus"]["seed"] == 7   # the later file, the earlier one
    assert merged["captions"]["workers"] == 4 and merged["name"] == "exp"
    merged = yaml.safe_load(printed_config(capsys, "--config", base, "--config", exp, "--set", "corpus.videos=9",
                                           "--set", "name=cli"))
    assert merged["corpus"]["videos"] == 9 and merged["name"] == "cli" and merged["corpus"]["seed"] == 7
    swapped = yaml.safe_load(printed_config(capsys, "--config", exp, "--config", base))
    assert swapped["corpus"]["videos"] == 3


@pytest.mark.parametrize("file_text, args, needles", [
    ("corpus:\n  vidoes: 3\n", (), ("corpus.vidoes", "unknown key")),
    ("", ("--set", "corpus.vidoes=3"), ("corpus.vidoes", "unknown key")),
    ("captions:\n  workers: many\n", (), ("captions.workers", "not a int")),
    ("", ("--set", "captions.workers=many"), ("captions.workers", "not a int")),
    ("corpus: 3\n", (), ("corpus",)),
    ("", ("--set", "corpus.videos"), ("corpus.videos", "key.path=value")),
])
def test_config_errors_are_one_line_naming_the_key_with_exit_2(tmp_path, file_text, args, needles):
    config = write_yaml(tmp_path / "bad.yaml", file_text)
    result = lvr1("config", "--config", config, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert_one_line_error(result, *needles)


def test_pipeline_train_and_submit_take_repeated_config_files(tmp_path):
    from longvideo_r1.cluster.submit import pipeline_entrypoint
    from longvideo_r1.platform.cli import build_parser

    parser = build_parser()
    for argv in (["pipeline"], ["train", "sft"], ["config"], ["submit"]):
        args = parser.parse_args([*argv, "--config", "a.yaml", "--config", "b.yaml", "--set", "x=1"])
        assert args.config == ["a.yaml", "b.yaml"] and args.set == ["x=1"]
        assert parser.parse_args(argv).config is None
    (tmp_path / "configs").mkdir()
    for name in ("cluster.yaml", "exp 1.yaml"):
        (tmp_path / "configs" / name).write_text("{}\n")
    command = pipeline_entrypoint([str(tmp_path / "configs" / "cluster.yaml"), str(tmp_path / "configs" / "exp 1.yaml")],
                                  ["corpus.videos=2"], tmp_path)
    assert command == "lvr1 pipeline --config configs/cluster.yaml --config 'configs/exp 1.yaml' --set corpus.videos=2"
    result = lvr1("submit", "--config", "a.yaml", "--config", "b.yaml", "--entrypoint", "echo hi")
    assert_one_line_error(result, "--entrypoint")


# ====================================================================== --version, logging options

def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    import longvideo_r1

    result = lvr1("--version")
    assert result.returncode == 0 and result.stdout == f"lvr1 {version('longvideo-r1')}\n"
    assert longvideo_r1.__version__ == version("longvideo-r1")


def test_log_level_options_before_or_after_the_subcommand(monkeypatch):
    import logging

    from longvideo_r1.logs import LEVEL_ENV
    from longvideo_r1.platform.cli import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["config"]).log_level is None
    assert parser.parse_args(["-v", "config"]).log_level == "DEBUG"
    assert parser.parse_args(["config", "-v"]).log_level == "DEBUG"
    assert parser.parse_args(["--log-level", "warning", "captions", "stats", "x"]).log_level == "WARNING"
    assert parser.parse_args(["captions", "stats", "x", "--log-level", "error"]).log_level == "ERROR"
    assert parser.parse_args(["--log-level", "error", "config", "-v"]).log_level == "DEBUG"   # the later one

    monkeypatch.delenv(LEVEL_ENV, raising=False)
    assert main(["--log-level", "warning", "config"]) == 0
    assert logging.getLogger("longvideo_r1").level == logging.WARNING and os.environ[LEVEL_ENV] == "WARNING"
    monkeypatch.setenv(LEVEL_ENV, "ERROR")
    assert main(["config"]) == 0 and logging.getLogger("longvideo_r1").level == logging.ERROR
    result = lvr1("config", "--log-level", "chatty")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_ray_log_to_driver_inside_a_job_or_at_debug(monkeypatch):
    from longvideo_r1.logs import JOB_ENV, ray_log_to_driver, setup_logging, worker_env

    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)
    setup_logging("INFO")
    assert not ray_log_to_driver() and ray_log_to_driver("DEBUG")
    assert worker_env() == {"LVR1_LOG_LEVEL": "INFO"}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")        # what `ray job submit` gives the entrypoint
    assert ray_log_to_driver()
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    assert ray_log_to_driver("WARNING")


ACTOR_SCRIPT = """
import logging, time
import ray
from longvideo_r1.actors import ActorGroup
from longvideo_r1.logs import ray_log_to_driver, setup_logging

setup_logging()
ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=ray_log_to_driver())

class Echo:                     # an actor of a platform pool: it sets up no logging of its own
    def ready(self):
        return True

    def say(self, text):
        log = logging.getLogger("longvideo_r1.echo")
        log.info("info %s", text)
        log.debug("debug %s", text)
        return logging.getLogger("longvideo_r1").level

group = ActorGroup(Echo, 1, options={"num_cpus": 0.5}, what="echo actors")
group.start()
print("level in the actor:", ray.get(group[0].say.remote("from the actor")))
time.sleep(3)            # Ray forwards worker output to the driver once a second
ray.shutdown()
"""


@pytest.mark.slow
def test_actor_logs_reach_the_driver_at_debug_level(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["LVR1_LOG_LEVEL"] = "DEBUG"
    result = subprocess.run([sys.executable, "-c", ACTOR_SCRIPT], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "level in the actor: 10" in result.stdout
    lines = [ln for ln in result.stderr.splitlines() if "longvideo_r1.echo" in ln]
    assert any("(Echo pid=" in ln and "INFO info from the actor" in ln for ln in lines), result.stderr[-3000:]
    assert any("DEBUG debug from the actor" in ln for ln in lines)
    assert sum("INFO info from the actor" in ln for ln in lines) == 1          # not twice


# ====================================================================== stdout holds results only

NOISY_COMMAND = """
import json, os, sys, types
from longvideo_r1.platform import cli

def run(args):
    import deepspeed                                      # its logger prints a warning on stdout
    from deepspeed.accelerator import get_accelerator
    get_accelerator()
    print("a stray print from library code")
    os.system("echo a child process writing to fd 1")
    os.write(1, b"raw bytes on fd 1\\n")
    print(json.dumps({"ok": True, "deepspeed": deepspeed.__version__}), file=args.stdout)
    return 0

probe = types.ModuleType("lvr1_probe")
probe.add_commands = lambda sub: sub.add_parser("probe").set_defaults(func=run)
sys.modules["lvr1_probe"] = probe
cli.COMMAND_MODULES += ("lvr1_probe",)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_stdout_carries_only_the_result_when_a_command_imports_deepspeed(tmp_path):
    result = subprocess.run([sys.executable, "-c", NOISY_COMMAND, "probe"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["ok"] is True
    for noise in ("Setting accelerator to CPU", "a stray print", "a child process", "raw bytes"):
        assert noise in result.stderr, noise


def test_eval_json_prints_one_object_on_one_line(store, tmp_path):
    row = {"key": "vid_a", "type": "demo", "video_info": {"duration_minutes": 25, "fps": 2.0},
           "qa": [{"uid": "1", "question": "Which?\n(A) a\n(B) b\n(C) c\n(D) d", "answer": "B",
                   "question_type": ["t"], "time_reference": "00:10-00:20"}]}
    (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
    result = lvr1("eval", "--policy", "random", "--benchmark", tmp_path / "q.jsonl", "--store", store, "--out",
                  tmp_path / "out", "--video-qa", "none", "--no-report", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert summary["questions"] == 1 and summary["policies"]["random"]["played"] == 1
