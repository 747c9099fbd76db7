"""Rollout throughput: our batched episode runner against the reference's served evaluation (and more).

Every approach plays the same questions of the demo corpus (``--run``: a finished
``lvr1 pipeline --config configs/demo-cpu.yaml`` folder), with the same model folder, the same episode
rules (``agent/episode.py``: ``tools.start`` → ``ep.prompt()`` → generate → ``ep.submit`` →
``tools.run`` → ``ep.observe``, malformed turns kept in the context), the same sampling
(temperature 1.0, top-p 1.0, ``--turn-tokens`` per turn, the protocol's stop strings ``</tool>`` and
``</answer>``) and the same ``--max-rounds``:

- **vllm batched** (ours, as the product runs it): ``run_rollouts`` over the whole batch with the
  in-process vLLM engine (``VLLMEngine``), token in / token out: each generation step batches the
  next turn of every active episode, the prompt is rendered once and each observation is appended
  as tokens, so nothing is re-rendered or re-tokenised.
- **served** (the reference's evaluation, ``eval/evaluation.py`` of LongVideo-R1): a real
  ``vllm serve`` on 127.0.0.1 and ``--clients`` concurrent client threads (36, as its
  ``--max_workers`` default and its documented command), one shared synchronous ``openai`` client,
  each thread playing whole episodes and sending the whole ``messages`` list to
  ``/v1/chat/completions`` every round, so the server re-renders the chat template and re-tokenises
  the whole conversation each round (its prefix cache then skips recomputing what it still holds).
  The server gets the settings of our engine, read off the running engine: model folder, dtype,
  max_model_len, KV cache size (``VLLM_CPU_KVCACHE_SPACE``; GPU memory utilisation on GPUs), prefix
  caching, eager mode, seed, and its scheduler limits (``max_num_seqs``, ``max_num_batched_tokens``:
  ``vllm serve``'s own CPU defaults are half the ``LLM`` class's, which would handicap it). It runs
  as ``vllm serve`` runs by default (API server + engine-core process) with
  ``--generation-config vllm`` so that no model default (top-k, repetition penalty) changes the
  sampling we send.
- **naive vllm** (the reference demo's loop): one episode at a time, re-rendering and re-tokenising
  the chat every round, on our in-process engine.
- **transformers batched**: ``run_rollouts`` on the transformers engine.

Where the reference and this bench differ, on purpose: the reference sends no sampling settings
(the server's defaults: the model's ``generation_config``, no per-turn token limit, no stop
strings; its model ends a turn with its end-of-turn token) and drops malformed turns from the
context; here every approach samples alike and keeps malformed turns, so all approaches do the same
work per episode (an untrained model writes mostly malformed turns; dropping them would keep the
served contexts short). The reference plays 30 rounds; ``--max-rounds`` sets it for all. Stop
strings are sent with ``include_stop_str_in_output`` so the served text ends as ours does.

Printed: episodes/s, sampled tokens/s and where the time goes. For ours: seconds in
``engine.generate``, in tools and in tokenising, and the prompt tokens handed to the engine (the
in-process engine runs with vLLM's stats off, as in the product, so its prefix-cache hits are not
counted). For the served approach, per client (the mean over the clients; each is busy for about
the wall time): seconds inside HTTP requests, client-side building of the request and parsing of the
reply, tools; and, from the server's Prometheus ``/metrics`` over the measured phase: prompt tokens,
of them prefix-cache hits, prompt tokens computed again, and request-seconds queued, prefilling and
decoding (summed over requests). Each model runs in its own subprocess; the server is stopped
(its whole process group) however the bench ends.

vLLM on CPU slows down sharply when another process takes a core: take figures on an idle machine.

Usage: python bench/bench_rollout.py [--models tiny-qwen3 smollm2] [--episodes 32] [--n 2]
       [--max-rounds 4] [--clients 36] [--approaches vllm_batched served naive_vllm transformers_batched]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

APPROACHES = ("vllm_batched", "served", "naive_vllm", "transformers_batched")
LABELS = {"vllm_batched": "vllm batched (ours)", "served": "served, N clients (reference eval)",
          "naive_vllm": "naive vllm (reference demo loop)", "transformers_batched": "transformers batched"}
SERVED_MODEL = "policy"
METRICS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens_cached_total", "vllm:prefix_cache_queries_total",
           "vllm:prefix_cache_hits_total", "vllm:generation_tokens_total", "vllm:request_success_total",
           "vllm:num_preemptions_total", "vllm:request_queue_time_seconds_sum",
           "vllm:request_prefill_time_seconds_sum", "vllm:request_decode_time_seconds_sum",
           "vllm:e2e_request_latency_seconds_sum")


def naive_rollouts(engine, tools, questions, config):
    """One episode at a time; each round re-renders and re-tokenises the whole conversation."""
    from longvideo_r1.agent.episode import EpisodeConfig
    from longvideo_r1.rollout.engine import Sampling

    timing = {"generate": 0.0, "tools": 0.0, "tokenize": 0.0}
    tokens = 0
    episodes = []
    for g, q in enumerate(questions):
        for k in range(config.n):
            ep = tools.start(q, EpisodeConfig(max_rounds=config.max_rounds, keep_malformed=True))
            while not ep.done:
                t = time.perf_counter()
                ids = engine.tokenizer.apply_chat_template(ep.prompt(), tokenize=True, add_generation_prompt=True,
                                                           return_dict=False)
                timing["tokenize"] += time.perf_counter() - t
                t = time.perf_counter()
                gen = engine.generate([list(ids)], [Sampling(max_tokens=config.max_turn_tokens,
                                                             temperature=config.temperature,
                                                             seed=hash((g, k, ep.round)) & 0x7FFFFFFF)])[0]
                timing["generate"] += time.perf_counter() - t
                tokens += len(gen.token_ids)
                t = time.perf_counter()
                text = engine.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
                timing["tokenize"] += time.perf_counter() - t
                action = ep.submit(text)
                if action.kind in ("get_caption", "video_qa"):
                    t = time.perf_counter()
                    obs, secs = tools.run(q.video_id, action)
                    timing["tools"] += time.perf_counter() - t
                    ep.observe(obs, secs)
            episodes.append(ep)
    return episodes, tokens, timing


# ---------------------------------------------------------------- the reference's way: vllm serve + N clients

class VLLMServer:
    """``vllm serve`` on 127.0.0.1 (a free port) in its own process group, stopped on exit.

    The group is killed on any exit of the ``with`` block (SIGTERM, then SIGKILL after 30 s); should
    this process itself be killed outright, the kernel sends the server SIGKILL (PR_SET_PDEATHSIG)
    and vLLM's engine core exits with its parent.
    """

    def __init__(self, model_dir: str, options: list[str], env: dict, log_path: Path, start_timeout: float):
        self.model_dir, self.options, self.env = model_dir, options, env
        self.log_path, self.start_timeout = log_path, start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "VLLMServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = serve_command(self.model_dir) + ["--host", "127.0.0.1", "--port", str(self.port),
                                                        "--served-model-name", SERVED_MODEL, *self.options]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, preexec_fn=_die_with_parent())
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with status {self.proc.returncode} before it was healthy; "
                                   f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve not healthy after {self.start_timeout:.0f} s "
                                   f"(raise --server-start-timeout); its log ({self.log_path}) ends:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        """The Prometheus counters of :data:`METRICS`, summed over their label sets."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as r:
            text = r.read().decode()
        out = dict.fromkeys(METRICS, 0.0)
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in out:
                out[name] += float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # the engine core may outlive the API server by a moment: sweep the group once more
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        self.proc = None

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_command(model_dir: str) -> list[str]:
    """``vllm serve MODEL``; with vllm-cpu, whose CLI cannot start (it asks for the version of a
    distribution named ``vllm``), the same OpenAI server as ``python -m vllm.entrypoints.openai.api_server``."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("vllm")
        return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model_dir]
    except PackageNotFoundError:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir]


def _die_with_parent():
    """A preexec function that has the kernel SIGKILL the server when the bench process dies (Linux).
    libc is loaded here, in the parent: the forked child only makes the call."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1


def server_options(engine) -> tuple[list[str], dict]:
    """``vllm serve`` options and environment that reproduce our running engine's settings."""
    import torch

    vc = engine.llm.llm_engine.vllm_config
    options = ["--dtype", str(vc.model_config.dtype).removeprefix("torch."),
               "--max-model-len", str(vc.model_config.max_model_len),
               "--seed", str(vc.model_config.seed),
               "--max-num-seqs", str(vc.scheduler_config.max_num_seqs),
               "--max-num-batched-tokens", str(vc.scheduler_config.max_num_batched_tokens),
               "--enable-prefix-caching" if vc.cache_config.enable_prefix_caching else "--no-enable-prefix-caching",
               "--generation-config", "vllm", "--disable-uvicorn-access-log"]
    if vc.model_config.enforce_eager:
        options.append("--enforce-eager")
    if torch.cuda.is_available():
        options += ["--gpu-memory-utilization", str(vc.cache_config.gpu_memory_utilization)]
    env = dict(os.environ)   # VLLM_CPU_KVCACHE_SPACE and thread binding, as our engine had them
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)   # ours runs in process (Ray actors); a server does not
    return options, env


def served_rollouts(base_url: str, tools, questions, config, clients: int):
    """The reference's evaluation: ``clients`` threads, one shared synchronous OpenAI client, each thread
    playing whole episodes; every round sends the whole chat to ``/v1/chat/completions``."""
    import openai

    from longvideo_r1.agent.episode import EpisodeConfig
    from longvideo_r1.agent.protocol import STOP_STRINGS

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", timeout=600.0, max_retries=0)
    episode_config = EpisodeConfig(max_rounds=config.max_rounds, keep_malformed=True)
    lock = threading.Lock()
    totals = {"http": 0.0, "client": 0.0, "tools": 0.0, "requests": 0, "sampled_tokens": 0, "prompt_tokens": 0}

    def play(question):
        t = {"http": 0.0, "client": 0.0, "tools": 0.0, "requests": 0, "sampled_tokens": 0, "prompt_tokens": 0}
        t0 = time.perf_counter()
        ep = tools.start(question, episode_config)
        t["client"] += time.perf_counter() - t0
        while not ep.done:
            t0 = time.perf_counter()
            messages = ep.prompt()
            t1 = time.perf_counter()
            response = client.chat.completions.create(
                model=SERVED_MODEL, messages=messages, max_tokens=config.max_turn_tokens,
                temperature=config.temperature, top_p=config.top_p, stop=list(STOP_STRINGS),
                extra_body={"include_stop_str_in_output": True})
            t2 = time.perf_counter()
            t["http"] += t2 - t1
            t["requests"] += 1
            t["sampled_tokens"] += response.usage.completion_tokens
            t["prompt_tokens"] += response.usage.prompt_tokens
            action = ep.submit(response.choices[0].message.content or "", t2 - t1)
            t["client"] += (t1 - t0) + (time.perf_counter() - t2)
            if action.kind in ("get_caption", "video_qa"):
                t0 = time.perf_counter()
                observation, seconds = tools.run(question.video_id, action)
                t["tools"] += time.perf_counter() - t0
                ep.observe(observation, seconds)
        with lock:
            for k, v in t.items():
                totals[k] += v
        return ep

    jobs = [q for q in questions for _ in range(config.n)]
    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="client") as pool:
        episodes = list(pool.map(play, jobs))
    return episodes, totals


# ---------------------------------------------------------------- one model, every approach

def run_one(model_name: str, args) -> dict:
    from longvideo_r1.agent.episode import Question
    from longvideo_r1.agent.tools import Tools
    from longvideo_r1.agent.video_qa import make_video_qa
    from longvideo_r1.corpus.store import CaptionStore
    from longvideo_r1.models import prepare_models
    from longvideo_r1.rollout.engine import HFEngine, VLLMEngine
    from longvideo_r1.rollout.episodes import RolloutConfig, RolloutTimings, run_rollouts

    model_dir = prepare_models(args.models_dir, [model_name])[model_name]
    run = Path(args.run)
    questions_file = run / "corpus" / "questions.jsonl"
    if not questions_file.is_file():
        sys.exit(f"bench_rollout: {questions_file} is missing: give --run a finished demo run folder "
                 "(lvr1 pipeline --config configs/demo-cpu.yaml)")
    rows = [json.loads(line) for line in questions_file.read_text().splitlines() if line]
    questions = [Question.from_row(r) for r in rows][: max(1, args.episodes // args.n)]
    tools = Tools(CaptionStore(run / "store"), make_video_qa("demo"))
    config = RolloutConfig(n=args.n, max_rounds=args.max_rounds, max_turn_tokens=args.turn_tokens,
                           temperature=1.0, max_response_tokens=16384, max_observation_tokens=2048)
    out = {"model": model_name, "episodes": len(questions) * args.n, "clients": args.clients}

    def record(label, wall, sampled_tokens, **detail):
        out[label] = {"wall_s": wall, "episodes_per_s": out["episodes"] / wall,
                      "sampled_tokens": sampled_tokens, "sampled_tokens_per_s": sampled_tokens / wall, **detail}
        print(f"  {model_name} {label}: {wall:.1f} s, {out['episodes'] / wall:.2f} episodes/s, "
              f"{sampled_tokens / wall:.0f} sampled tokens/s", file=sys.stderr, flush=True)

    def batched(label, eng):
        timings = RolloutTimings()
        prompt_tokens, calls = eng.stats.prompt_tokens, eng.stats.generate_calls
        t0 = time.perf_counter()
        episodes = run_rollouts(eng, tools, questions, config, timings)
        wall = time.perf_counter() - t0
        record(label, wall, sum(sum(e.response_mask) for e in episodes), generate_s=timings.generate_seconds,
               tools_s=timings.tool_seconds, tokenize_s=timings.tokenize_seconds,
               prompt_tokens=eng.stats.prompt_tokens - prompt_tokens, generate_calls=eng.stats.generate_calls - calls)

    need_vllm = {"vllm_batched", "naive_vllm", "served"} & set(args.approaches)
    if need_vllm:
        t = time.perf_counter()
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
        engine = VLLMEngine(str(model_dir), max_model_len=args.max_model_len, dtype=args.dtype)
        out["vllm_start_s"] = time.perf_counter() - t
        run_rollouts(engine, tools, questions[:1], RolloutConfig(n=1, max_rounds=1, max_turn_tokens=8))  # warm-up
        if "vllm_batched" in args.approaches:
            batched("vllm_batched", engine)
        if "naive_vllm" in args.approaches:
            prompt_tokens = engine.stats.prompt_tokens
            t0 = time.perf_counter()
            _, tokens, timing = naive_rollouts(engine, tools, questions, config)
            record("naive_vllm", time.perf_counter() - t0, tokens, **{f"{k}_s": v for k, v in timing.items()},
                   prompt_tokens=engine.stats.prompt_tokens - prompt_tokens)
        options, env = server_options(engine)
        del engine   # one engine at a time: the server starts after ours is gone

    if "served" in args.approaches:
        import gc

        gc.collect()
        log_path = Path(args.server_log or f"/tmp/bench_rollout_vllm_serve_{model_name}_{os.getpid()}.log")
        t = time.perf_counter()
        with VLLMServer(str(model_dir), options, env, log_path, args.server_start_timeout) as server:
            out["server_start_s"] = time.perf_counter() - t
            out["server_command"] = " ".join(["python"] + server.command[1:])
            served_rollouts(server.url, tools, questions[:1], RolloutConfig(n=1, max_rounds=1, max_turn_tokens=8),
                            clients=1)   # warm-up
            before = server.metrics()
            t0 = time.perf_counter()
            _, totals = served_rollouts(server.url, tools, questions, config, args.clients)
            wall = time.perf_counter() - t0
            after = server.metrics()
        clients = min(args.clients, out["episodes"])
        record("served", wall, totals["sampled_tokens"],
               **{f"{k}_per_client_s": totals[k] / clients for k in ("http", "client", "tools")},
               requests=totals["requests"], prompt_tokens=totals["prompt_tokens"],
               server={k.removeprefix("vllm:"): after[k] - before[k] for k in METRICS})

    if "transformers_batched" in args.approaches:
        batched("transformers_batched", HFEngine(str(model_dir)))
    return out


# ---------------------------------------------------------------- driver and report

def run_child(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run one model's subprocess; on an interrupt, SIGTERM it so that it stops its server itself."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = proc.communicate()
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)   # unwinds through the finally blocks that stop the server


def report(args, results: list[dict]) -> None:
    print(f"\n## Rollout throughput ({args.episodes} episodes = {args.episodes // args.n} demo questions × n={args.n}, "
          f"≤{args.max_rounds} rounds, ≤{args.turn_tokens} tokens per turn, temperature 1.0, "
          f"served: {args.clients} concurrent clients)\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"load average (1 min) at the end {load:.1f}\n")
    base_label = "served" if any("served" in r for r in results) else "naive"
    print("| model | approach | wall s | episodes/s | sampled tokens | sampled tokens/s | prompt tokens sent | "
          f"vs {base_label} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        base = r.get("served", r.get("naive_vllm", {})).get("episodes_per_s")
        for label in APPROACHES:
            if label not in r:
                continue
            m = r[label]
            ratio = f"{m['episodes_per_s'] / base:.2f}x" if base else ""
            print(f"| {r['model']} | {LABELS[label]} | {m['wall_s']:.1f} | {m['episodes_per_s']:.2f} | "
                  f"{m['sampled_tokens']} | {m['sampled_tokens_per_s']:.0f} | {m.get('prompt_tokens', '')} | {ratio} |")
    print("\n### Where the time goes\n")
    print("| model | approach | generate / in HTTP s | tools s | tokenise / client build+parse s | other |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        for label in ("vllm_batched", "naive_vllm", "transformers_batched"):
            if label in r:
                m = r[label]
                calls = f"{m['generate_calls']} generate calls" if "generate_calls" in m else ""
                print(f"| {r['model']} | {LABELS[label]} | {m['generate_s']:.1f} | {m['tools_s']:.2f} | "
                      f"{m['tokenize_s']:.2f} | {calls} |")
        if "served" in r:
            m, s = r["served"], r["served"]["server"]
            computed = s["prompt_tokens_total"] - s["prompt_tokens_cached_total"]
            hit = s["prefix_cache_hits_total"] / s["prefix_cache_queries_total"] if s["prefix_cache_queries_total"] else 0
            print(f"| {r['model']} | {LABELS['served']} (per client) | {m['http_per_client_s']:.1f} | "
                  f"{m['tools_per_client_s']:.2f} | {m['client_per_client_s']:.2f} | {m['requests']} requests |")
            print(f"| {r['model']} | server side (/metrics) | | | | prompt tokens {s['prompt_tokens_total']:.0f}, "
                  f"prefix-cache hits {s['prefix_cache_hits_total']:.0f} ({hit:.0%} of queried), computed again "
                  f"{computed:.0f}; sampled {s['generation_tokens_total']:.0f}; request-seconds: queued "
                  f"{s['request_queue_time_seconds_sum']:.1f}, prefill {s['request_prefill_time_seconds_sum']:.1f}, "
                  f"decode {s['request_decode_time_seconds_sum']:.1f}, end to end "
                  f"{s['e2e_request_latency_seconds_sum']:.1f}; preemptions {s['num_preemptions_total']:.0f} |")
    if any("served" in r for r in results):
        print("\nserved, per client: the mean over the clients of each one's seconds; clients finish at different "
              "times, so the mean is below the wall time. Time in HTTP includes the SDK's encoding and parsing and the "
              "server's chat rendering and tokenising. Server request-seconds are summed over the requests, which "
              "run concurrently.")
    for r in results:
        starts = [f"in-process engine {r['vllm_start_s']:.1f} s"] if "vllm_start_s" in r else []
        if "server_start_s" in r:
            starts.append(f"vllm serve to healthy {r['server_start_s']:.1f} s")
        if starts:
            print(f"\n{r['model']} start-up (not in the figures above): {', '.join(starts)}")
        if "server_command" in r:
            print(f"{r['model']} server: `{r['server_command']}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny-qwen3", "smollm2"])
    parser.add_argument("--models-dir", default="runs/models")
    parser.add_argument("--run", default="runs/demo-cpu", help="a finished demo run folder (its corpus and store)")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=4)
    parser.add_argument("--turn-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=36, help="concurrent clients of the served approach "
                        "(36: the reference evaluation's --max_workers)")
    parser.add_argument("--approaches", nargs="+", choices=APPROACHES, default=list(APPROACHES))
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--dtype", default="auto", help="vLLM dtype (auto = float32 on CPU; bfloat16 needs AVX512-BF16/AMX)")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (GiB) for both engines; it "
                        "must hold every concurrent episode's context or both approaches queue and preempt (SmolLM2 in "
                        "fp32 takes 45 KiB a token: 36 episodes of 4 rounds need about 3 GiB)")
    parser.add_argument("--server-start-timeout", type=float, default=900.0, help="seconds for vllm serve to get healthy")
    parser.add_argument("--server-log", help="where vllm serve writes its log (default: a file under /tmp)")
    parser.add_argument("--skip-transformers", action="store_true", help="leave out transformers batched")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.skip_transformers:
        args.approaches = [a for a in args.approaches if a != "transformers_batched"]
    for flag in ("episodes", "n", "max_rounds", "turn_tokens", "clients"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    if args.one:   # child process: one model
        print(json.dumps(run_one(args.one, args)))
        return
    results = []
    for name in args.models:
        cmd = [sys.executable, __file__, "--one", name] + [a for a in sys.argv[1:] if a != "--models"
                                                            and a not in args.models]
        proc = run_child(cmd)
        if proc.returncode != 0:
            print(f"benchmark of {name} failed (see its output above)", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report(args, results)


if __name__ == "__main__":
    main()
