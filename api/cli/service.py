"""The commands that talk to a running service: ``submit``, ``status``, ``result``, ``wait``,
``history`` (through ``api.client``)."""

from __future__ import annotations

import argparse
import sys

from api.cli.common import client_of, cut_middle, print_json, read_request
from models.store.lifecycle import ENDPOINTS


def _progress(job: dict, elapsed: float) -> None:
    if job.get("cacheOf"):
        line = (
            f"actq: job {job['id']} answered from job {job['cacheOf']} (cache hit; --fresh reruns)"
        )
    else:
        line = (
            f"actq: job {job['id']} {job['status']} after {elapsed:.1f}s "
            f"(attempts {job['attempts']})"
        )
    end = "\r" if sys.stderr.isatty() and job["status"] in ("queued", "started") else "\n"
    print(line.ljust(72), end=end, file=sys.stderr, flush=True)


def _print_warnings(job: dict) -> None:
    for warning in job.get("warnings") or []:
        print(f"actq: warning: {warning['message']}", file=sys.stderr)


def summary(job: dict) -> str:
    """A few lines about a job for a person; ``--json`` prints the whole status body."""
    lines = [f"job {job['id']}  {job['status']}  {job['endpoint']}  model {job['model']}"]
    if job.get("label") or job.get("tags"):
        lines.append(f"  label {job.get('label') or '-'}  tags {','.join(job['tags']) or '-'}")
    if job.get("cacheOf"):
        lines.append(f"  answered from job {job['cacheOf']} (cache hit)")
    timing = [f"created {job['createdAt']}"]
    for key, name in (("queuedSeconds", "queued"), ("engineSeconds", "engine")):
        if job.get(key) is not None:
            timing.append(f"{name} {job[key]:.3f}s")
    timing.append(f"attempts {job['attempts']}")
    lines.append("  " + "  ".join(timing))
    for run in job.get("runs") or []:
        loss = "-" if run.get("loss") is None else f"{run['loss']:.4g}"
        mark = " (ablated)" if run.get("hasAblations") else ""
        lines.append(
            f"  run {run['address']}  loss {loss}{mark}  {cut_middle(run['prompt'], 50)!r}"
        )
    if job.get("error"):
        lines.append(f"  error {job['error']['type']}: {job['error']['message']}")
    lines.extend(f"  warning: {w['message']}" for w in job.get("warnings") or [])
    return "\n".join(lines)


def _final_code(job: dict) -> int:
    if job["status"] == "finished":
        return 0
    error = job.get("error") or {}
    print(f"actq: job {job['id']} {job['status']}: {error.get('message')}", file=sys.stderr)
    return 1


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_of(args)
    body = read_request(args.request) if args.endpoint != "model_info" else None
    job = client.submit(
        args.endpoint, body, model=args.model, label=args.label, tags=args.tag, fresh=args.fresh
    )
    print(f"{job['id']} {client.url}{job['url']}")
    _print_warnings(job)
    if job.get("cacheOf") and not args.wait:
        print(
            f"actq: answered from job {job['cacheOf']} (cache hit; --fresh reruns)", file=sys.stderr
        )
    if not args.wait:
        return 0
    return _final_code(client.wait(job["id"], on_progress=_progress))


def cmd_status(args: argparse.Namespace) -> int:
    job = client_of(args).status(args.job)
    print_json(job) if args.json else print(summary(job))
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
    print_json(job) if args.json else print(summary(job))
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
    print(
        f"{'JOB':26}  {'CREATED':20}  {'STATUS':8}  {'ENDPOINT':22}  {'MODEL':16}  "
        f"{'LABEL':12}  {'TAGS':16}  {'CACHE':5}  PROMPT"
    )
    for job in page["jobs"]:
        prompt = job["runs"][0]["prompt"] if job["runs"] else ""
        extra = f" (+{len(job['runs']) - 1})" if len(job["runs"]) > 1 else ""
        created = job["createdAt"][:19] + "Z"
        cache = "hit" if job.get("cacheOf") else "-"
        print(
            f"{job['id']:26}  {created:20}  {job['status']:8}  {job['endpoint'][:22]:22}  "
            f"{job['model'][:16]:16}  {cut_middle(job.get('label') or '-', 12):12}  "
            f"{cut_middle(','.join(job['tags']) or '-', 16):16}  {cache:5}  "
            f"{cut_middle(prompt, 40)!r}{extra}"
        )
    if page.get("nextCursor"):
        print(f"more: --cursor {page['nextCursor']}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("submit", help="submit a request to a running service")
    p.add_argument("endpoint", choices=ENDPOINTS, help="the TDB route the body is for")
    p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
    p.add_argument("--model", help="a model the service serves (default: its default model)")
    p.add_argument("--label", help="a name for the job and its runs")
    p.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait for the job, showing progress")
    p.add_argument(
        "--fresh", action="store_true", help="run again even if an identical request finished"
    )
    p.set_defaults(func=cmd_submit)
    for name, func, help_ in (
        ("status", cmd_status, "a job's status (a summary; --json for all of it)"),
        ("result", cmd_result, "a job's TDB response"),
        ("wait", cmd_wait, "block until a job is done, then print its summary"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("job", help="the job id")
        if name == "result":
            p.add_argument("--wait", type=float, help="seconds to wait for the result")
        if name == "wait":
            p.add_argument("--timeout", type=float, help="give up after this many seconds")
        if name != "result":
            p.add_argument("--json", action="store_true", help="print the whole status JSON")
        p.set_defaults(func=func)
    p = sub.add_parser("history", help="list past jobs, newest first")
    for flag, help_ in (
        ("--model", "only jobs of this model"),
        ("--status", "queued, started, finished, failed or canceled"),
        ("--endpoint", "only jobs of this route"),
        ("--prompt", "the exact prompt of a run"),
        ("--label", "the exact label"),
        ("--since", "created at or after (ISO 8601, e.g. 2026-12-01T10:00:00Z)"),
        ("--until", "created before (ISO 8601)"),
    ):
        p.add_argument(flag, help=help_)
    p.add_argument("--contains", help="substring of the prompt")
    p.add_argument("--tag", action="append", help="a tag the job has (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="jobs per page (default 20)")
    p.add_argument("--cursor", help="the page after this cursor (printed under a full page)")
    p.add_argument("--json", action="store_true", help="print the page as JSON")
    p.set_defaults(func=cmd_history)
