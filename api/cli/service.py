"""The commands that talk to a running service: ``submit``, ``status``, ``result``, ``wait``,
``history`` (through ``api.client``)."""

from __future__ import annotations

import argparse
import sys

from api.cli.common import client_of, print_json, read_request
from models.store.lifecycle import ENDPOINTS


def _progress(job: dict, elapsed: float) -> None:
    line = (
        f"actq: job {job['id']} {job['status']} after {elapsed:.1f}s (attempts {job['attempts']})"
    )
    end = "\r" if sys.stderr.isatty() and job["status"] in ("queued", "started") else "\n"
    print(line.ljust(72), end=end, file=sys.stderr, flush=True)


def _final_code(job: dict) -> int:
    if job["status"] == "finished":
        return 0
    error = job.get("error") or {}
    print(f"actq: job {job['id']} {job['status']}: {error.get('message')}", file=sys.stderr)
    return 1


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_of(args)
    body = read_request(args.request) if args.endpoint != "model_info" else None
    job = client.submit(args.endpoint, body, model=args.model, label=args.label, tags=args.tag)
    print(f"{job['id']} {client.url}{job['url']}")
    if not args.wait:
        return 0
    return _final_code(client.wait(job["id"], on_progress=_progress))


def cmd_status(args: argparse.Namespace) -> int:
    print_json(client_of(args).status(args.job))
    return 0


def cmd_result(args: argparse.Namespace) -> int:
    status, body = client_of(args).result(args.job, wait=args.wait)
    sys.stdout.write(body.decode("utf-8") + "\n")
    if status == 202:
        print("actq: the job is still pending", file=sys.stderr)
        return 3
    return 0 if status == 200 else 1


def cmd_wait(args: argparse.Namespace) -> int:
    job = client_of(args).wait(args.job, timeout=args.timeout, on_progress=_progress)
    print_json(job)
    return _final_code(job)


def cmd_history(args: argparse.Namespace) -> int:
    page = client_of(args).history(
        model=args.model,
        status=args.status,
        endpoint=args.endpoint,
        prompt=args.prompt,
        promptContains=args.contains,
        tag=args.tag,
        label=args.label,
        since=args.since,
        until=args.until,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print_json(page)
        return 0
    print(f"{'JOB':26}  {'CREATED':19}  {'STATUS':8}  {'ENDPOINT':30}  {'MODEL':16}  PROMPT")
    for job in page["jobs"]:
        prompt = job["runs"][0]["prompt"] if job["runs"] else ""
        extra = f" (+{len(job['runs']) - 1})" if len(job["runs"]) > 1 else ""
        created = job["createdAt"][:19].replace("T", " ")
        print(
            f"{job['id']:26}  {created:19}  {job['status']:8}  {job['endpoint']:30}  "
            f"{job['model'][:16]:16}  {prompt[:40]!r}{extra}"
        )
    if page.get("nextCursor"):
        print(f"more: --cursor {page['nextCursor']}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("submit", help="submit a request to a running service")
    p.add_argument("endpoint", choices=ENDPOINTS)
    p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
    p.add_argument("--model")
    p.add_argument("--label")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    p.set_defaults(func=cmd_submit)
    for name, func, help_ in (
        ("status", cmd_status, "a job's status"),
        ("result", cmd_result, "a job's TDB response"),
        ("wait", cmd_wait, "block until a job is done"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("job")
        if name == "result":
            p.add_argument("--wait", type=float, help="seconds to wait for the result")
        if name == "wait":
            p.add_argument("--timeout", type=float)
        p.set_defaults(func=func)
    p = sub.add_parser("history", help="list past jobs, newest first")
    for flag in ("--model", "--status", "--endpoint", "--prompt", "--label", "--since", "--until"):
        p.add_argument(flag)
    p.add_argument("--contains", help="substring of the prompt")
    p.add_argument("--tag", action="append")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--cursor")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)
