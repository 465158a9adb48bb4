"""``actq compare`` and ``actq runs``: comparing runs and listing them from the command line.

``actq compare A B`` prints a readable summary of ``GET /v1/compare`` (the loss change, then the
nodes that moved most with their values, then the top output tokens); ``--json`` prints the JSON.
``actq compare RUN --baseline`` compares RUN with its clean baseline, and when none has finished
it submits the clean twin (the same sub-request without ablations), waits for it, then compares.
``actq runs [filters]`` lists runs (one line per sub-request) as a table. Loaded by ``api.cli``
through ``add_commands``; talks to a running service through ``api.client``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from api.charts import fmt
from api.cli.common import client_of, cut_middle
from models.store.run_keys import ablation_key

SUMMARY_NODES = 10
SUMMARY_TOKENS = 8


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def _ablations(items: list | None) -> str:
    """Ablations by node key and value: ``attention_head:1:14,*,0 = 0.0``."""
    return ", ".join(f"{ablation_key(a)} = {a.get('value')}" for a in items or []) or "none"


def _run_line(name: str, side: dict) -> str:
    label = f"  {side['label']!r}" if side.get("label") else ""
    return f"{name}  {side['run']}  {side['endpoint']} on {side['model']} ({side['status']}){label}"


def _change(c: dict) -> str:
    return f"{fmt(c['a'])} -> {fmt(c['b'])} ({fmt(c['delta'], signed=True)})"


def _node_lines(table: dict, top: int) -> list[str]:
    moved = [r for r in table["rows"] if r["maxAbsDelta"]]
    lines = [
        f"nodes that moved most ({table['name']}, sorted by {table['sortedBy']}; a -> b (change)):"
    ]
    for row in moved[:top]:
        values = "   ".join(f"{g} {_change(row['values'][g])}" for g in table["groups"])
        lines += [f"  {row['label']}", f"      {values}"]
    if not moved:
        lines.append("  no node changed")
    counts = table["counts"]
    if counts["onlyA"] or counts["onlyB"]:
        lines.append(
            f"  ({counts['onlyA']} nodes only in a's top-k and {counts['onlyB']} only in b's: "
            "absent from the other run, not zero)"
        )
    return lines


def _token_lines(tokens: dict, top: int) -> list[str]:
    lines = ["top output tokens (logit a [rank] -> logit b [rank], change):"]
    for row in tokens["rows"][:top]:
        ranks = {k: row["rank"][k] or ">100" for k in ("a", "b")}
        logit = row["logit"]
        lines.append(
            f"  {json.dumps(row['token'], ensure_ascii=False):16} {fmt(logit['a'])} [{ranks['a']}] "
            f"-> {fmt(logit['b'])} [{ranks['b']}]  ({fmt(logit['delta'], signed=True)})"
        )
    return lines


def format_summary(result: dict, base_url: str = "", top: int = SUMMARY_NODES) -> str:
    """The comparison as text: runs, what differs, the loss change, nodes, tokens, notes."""
    lines = [_run_line("a", result["a"]), _run_line("b", result["b"])]
    differing = [s for s in result["settings"] if not s["same"]]
    lines.append("differs: " + (", ".join(s["name"] for s in differing) or "nothing"))
    for s in differing:
        show = _ablations if s["name"] == "ablations" else _short
        lines += [f"  {s['name']}:", f"    a {show(s['a'])}", f"    b {show(s['b'])}"]
    lines += ["", "loss (logit difference)  " + _change(result["loss"])]
    traced = result["tracedValue"]
    if traced["a"] is not None or traced["b"] is not None:
        lines.append("traced value  " + _change(traced))
    for table in result["nodeTables"]:
        lines += ["", *_node_lines(table, top)]
    if result["topOutputTokens"]:
        lines += ["", *_token_lines(result["topOutputTokens"], min(top, SUMMARY_TOKENS))]
    if result["notes"]:
        lines += ["", *(f"note: {n}" for n in result["notes"])]
    lines += ["", f"page: {base_url}{result['page']}"]
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------------


def _baseline_of(client, run: str, timeout: float | None) -> str:
    """The address of RUN's clean baseline, submitting and awaiting it if none finished."""
    from api.client import ClientError

    try:
        return client.baseline(run)["baseline"]["run"]
    except ClientError as error:
        if error.status != 404:
            raise
    print(f"actq: no clean baseline of {run} yet; submitting its clean twin", file=sys.stderr)
    job = client.submit_baseline(run)
    final = client.wait(job["id"], timeout=timeout)
    if final["status"] != "finished":
        message = (final.get("error") or {}).get("message")
        raise SystemExit(f"actq: the clean twin {job['id']} {final['status']}: {message}")
    print(f"actq: clean twin {job['run']} finished", file=sys.stderr)
    return job["run"]


def cmd_compare(args: argparse.Namespace) -> int:
    client = client_of(args)
    if args.baseline:
        if args.b:
            raise SystemExit("actq: compare RUN --baseline takes one run")
        a, b = _baseline_of(client, args.a, args.timeout), args.a
    elif not args.b:
        raise SystemExit("actq: compare needs two runs (A B), or one run and --baseline")
    else:
        a, b = args.a, args.b
    result = client.compare(a, b, only_diff=args.only_diff, sort=args.sort)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_summary(result, client.url, args.top))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    has_ablations = True if args.ablated else False if args.clean else None
    page = client_of(args).runs(
        model=args.model,
        prompt=args.prompt,
        promptContains=args.contains,
        samePromptAs=args.same_prompt_as,
        hasAblations=has_ablations,
        ablates=args.ablates,
        tag=args.tag,
        label=args.label,
        status=args.status,
        endpoint=args.endpoint,
        since=args.since,
        until=args.until,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{'RUN':28}  {'CREATED':20}  {'STATUS':8}  {'LOSS':>9}  {'ABLATIONS':30}  "
        f"{'LABEL':14}  {'TAGS':16}  {'CACHE':5}  PROMPT"
    )
    for run in page["runs"]:
        created = run["createdAt"][:19] + "Z"
        ablations = ",".join(run["ablationKeys"]) or "-"
        cache = "hit" if run.get("cacheOf") else "-"
        print(
            f"{run['run']:28}  {created:20}  {run['status']:8}  {fmt(run['loss']):>9}  "
            f"{cut_middle(ablations, 30):30}  {cut_middle(run.get('label') or '-', 14):14}  "
            f"{cut_middle(','.join(run['tags']) or '-', 16):16}  {cache:5}  "
            f"{cut_middle(run['prompt'], 40)!r}"
        )
    if page.get("nextCursor"):
        print(f"more: --cursor {page['nextCursor']}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("compare", help="compare two runs (JOB/N, or JOB for its first run)")
    p.add_argument("a", help="run a (the reference; changes are b - a)")
    p.add_argument("b", nargs="?", help="run b")
    p.add_argument(
        "--baseline",
        action="store_true",
        help="compare run A with its clean baseline (submits the clean twin if none exists)",
    )
    p.add_argument("--json", action="store_true", help="print the comparison JSON")
    p.add_argument("--only-diff", action="store_true", help="keep only what differs")
    p.add_argument("--sort", help="sort nodes by the change in this group (e.g. act_times_grad)")
    p.add_argument("--top", type=int, default=SUMMARY_NODES, help="nodes to show")
    p.add_argument("--timeout", type=float, help="seconds to wait for a clean twin")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("runs", help="list runs (sub-requests), newest first")
    for flag, help_ in (
        ("--model", "only runs of this model"),
        ("--prompt", "the exact prompt"),
        ("--label", "the exact label"),
        ("--status", "the status of the run's job"),
        ("--endpoint", "only runs of this route"),
        ("--since", "created at or after (ISO 8601, e.g. 2026-12-01T10:00:00Z)"),
        ("--until", "created before (ISO 8601)"),
    ):
        p.add_argument(flag, help=help_)
    p.add_argument("--contains", help="substring of the prompt")
    p.add_argument("--same-prompt-as", help="runs of the same prompt and model as this run")
    ablations = p.add_mutually_exclusive_group()
    ablations.add_argument("--ablated", action="store_true", help="only runs with ablations")
    ablations.add_argument("--clean", action="store_true", help="only runs without ablations")
    p.add_argument("--ablates", action="append", help="node key, e.g. attention_head:1:14,0,0")
    p.add_argument("--tag", action="append", help="a tag the run has (repeatable)")
    p.add_argument("--limit", type=int, default=20, help="runs per page (default 20)")
    p.add_argument("--cursor", help="the page after this cursor (printed under a full page)")
    p.add_argument("--json", action="store_true", help="print the page as JSON")
    p.set_defaults(func=cmd_runs)
