"""``lvr1 submit``: the CLI glue of the cluster room (imports stay light until a command runs)."""

from __future__ import annotations

import sys


def _cmd_submit(args) -> int:
    from longvideo_r1.cluster.submit import parse_env, pipeline_entrypoint, submit
    from longvideo_r1.errors import InputError

    if args.entrypoint and (args.config or args.set):
        raise InputError("--entrypoint replaces `lvr1 pipeline --config … --set …`: give one or the other")
    if not args.entrypoint:
        from longvideo_r1.cluster.submit import check_corpus_paths
        from longvideo_r1.platform.config import load_config

        check_corpus_paths(load_config(args.config, args.set))     # refused here, before any upload
    entrypoint = args.entrypoint or pipeline_entrypoint(args.config, args.set, args.working_dir)
    out = getattr(args, "stdout", None) or sys.stdout          # the job's logs and the job id are the results
    result = submit(entrypoint, address=args.address, working_dir=args.working_dir, env=parse_env(args.env),
                    excludes=args.exclude, wait=not args.no_wait, submission_id=args.job_id, out=out)
    if args.no_wait:
        print(result.job_id, file=out)
        return 0
    if result.status == "SUCCEEDED":
        print(f"lvr1 submit: job {result.job_id} SUCCEEDED", file=sys.stderr)
        return 0
    reason = " ".join(result.message.split())[:300]
    print(f"lvr1 submit: job {result.job_id} {result.status}" + (f": {reason}" if reason else ""), file=sys.stderr)
    return result.exit_code


def add_commands(sub) -> None:
    p = sub.add_parser(
        "submit", help="run the main job on a Ray cluster as a Ray job (uploads this repo, streams the logs)",
        description="Submit `lvr1 pipeline --config CONFIG [--set …]` as a Ray job: the working dir (without "
        "runs/, .venv/, .git/, …) is uploaded as its runtime env, the logs are streamed, and the exit status "
        "is the job's (0 SUCCEEDED, 1 FAILED or STOPPED). The cluster token is read like Ray does: "
        "RAY_AUTH_TOKEN, else the file in RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token.")
    p.add_argument("--config", action="append", metavar="FILE",
                   help="pipeline config under the working dir (e.g. configs/demo-cpu.yaml), or an absolute path "
                   "that exists on the cluster; repeatable, passed on in order (later files win)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, passed on to `lvr1 pipeline` (repeatable)")
    p.add_argument("--address", help="the cluster's dashboard URL (default $RAY_API_SERVER_ADDRESS, or "
                   "http://127.0.0.1:8265)")
    p.add_argument("--working-dir", default=".", help="folder uploaded as the job's working dir (default .)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable of the job (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="also leave out of the upload (gitignore syntax; repeatable)")
    p.add_argument("--entrypoint", help="run this shell command instead of `lvr1 pipeline …` (e.g. a bench script)")
    p.add_argument("--job-id", help="submission id to use (default: Ray makes one)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return once it is submitted")
    p.set_defaults(func=_cmd_submit)

