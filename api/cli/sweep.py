"""``actq sweep REQUEST.json --heads all``: one base request under a grid of ablations, as a sweep
on the running service; waits with a progress line, then prints the points that moved the loss
most and the sweep page's URL.

The request file is what ``actq submit batched_tdb`` takes (one sub-request), a single TDB request
spec, or a ``batched`` request with one inference sub-request. The grid is one of ``--heads``,
``--neurons`` and ``--latents``, at ``--positions`` with ``--values``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from api.cli.common import cut_middle, print_json
from models.settings import Settings

POLL_SECONDS = 0.5
FINAL = ("finished", "failed", "canceled")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _node(text: str) -> dict:
    layer, index = text.split(":")
    return {"layer": int(layer), "index": int(index)}


def _latent(text: str) -> dict:
    parts = text.split(":")
    node_type = parts[0] if len(parts) == 3 else "autoencoder_latent"
    return {"nodeType": node_type, **_node(":".join(parts[-2:]))}


def _position(text: str):
    return text if text in ("last", "all") else int(text)


def grid_of(args: argparse.Namespace) -> dict:
    grid: dict = {}
    if args.heads is not None:
        grid["heads"] = "all" if args.heads == "all" else _ints(args.heads)
    if args.neurons:
        grid["neurons"] = [_node(n) for n in args.neurons]
    if args.latents:
        grid["latents"] = [_latent(n) for n in args.latents]
    positions = [_position(p) for p in args.positions.split(",")]
    grid["positions"] = positions[0] if len(positions) == 1 else positions
    if args.values == "mean":
        grid["values"] = "mean"
    else:
        values = [float(v) for v in args.values.split(",")]
        grid["values"] = values[0] if len(values) == 1 else values
    return grid


def body_of(args: argparse.Namespace) -> dict:
    request = json.loads(Path(args.request).read_text(encoding="utf-8"))
    batched = "inferenceSubRequests" in request or "inferenceRequestSpec" in request
    body = {"batched" if batched else "base": request, "grid": grid_of(args)}
    if args.node:
        body["node"] = json.loads(args.node)
    if args.group:
        body["group"] = args.group
    if args.label:
        body["label"] = args.label
    if args.tag:
        body["tags"] = args.tag
    return body


def top_lines(view: dict, n: int) -> list[str]:
    points = [p for p in view.get("points") or [] if p.get("lossChange") is not None]
    points.sort(key=lambda p: (-abs(p["lossChange"]), p["index"]))
    base = view["baseline"]
    lines = [f"baseline {base['run']}  loss {_num(base['loss'])}", ""]
    lines.append(f"{'node':<28} {'token':>5} {'value':>9} {'loss':>9} {'change':>10}  run")
    for p in points[:n]:
        node = cut_middle(f"{p['nodeType']} L{p['layer']} #{p['nodeIndex']}", 28)
        lines.append(
            f"{node:<28} {p['position']:>5} {_num(p['value']):>9} {_num(p['loss']):>9} "
            f"{_num(p['lossChange'], True):>10}  {p['run']}"
        )
    return lines


def _num(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def cmd_sweep(args: argparse.Namespace) -> int:
    from api.client import Client, ClientError

    client = Client(args.sweep_url or args.url or Settings().api_url)
    params = {"model": args.model} if args.model else None
    response = client.http.post(
        f"{client.url}/v1/sweeps", json=body_of(args), params=params, timeout=client.timeout
    )
    if response.status_code >= 400:
        raise ClientError(response.status_code, response.json())
    view = response.json()
    page = f"{client.url}{view['pageUrl']}"
    print(f"actq: sweep {view['id']} ({page})", file=sys.stderr)
    if args.no_wait:
        print(f"{view['id']} {page}")
        return 0
    while view["status"] not in FINAL:
        time.sleep(POLL_SECONDS)
        view = client._checked(client._get(view["url"])).json()
        done, total = view["progress"]["done"], view["progress"]["of"]
        print(f"\ractq: {view['status']} {done}/{total} points", end="", file=sys.stderr)
    print(file=sys.stderr)
    if args.json:
        print_json(view)
    else:
        print("\n".join(top_lines(view, args.top)))
        print(f"\npage: {page}")
        print(f"csv:  {client.url}{view['csvUrl']}")
    return 0 if view["status"] == "finished" else 1


def add_commands(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run one request under a grid of ablations (a sweep); prints the top cells",
        description="Submit a sweep: the base request under every ablation of a grid (nodes x "
        "positions x values), each point a run of the history. Waits with progress, then prints "
        "the points that changed the loss most and the sweep page's URL.",
    )
    p.add_argument(
        "request",
        help="a batched_tdb request with one sub-request, a TDB request spec, "
        "or a batched request with one inference sub-request (JSON file)",
    )
    p.add_argument("--url", dest="sweep_url", help="service URL (default: ACTQ_API_URL)")
    p.add_argument("--model", help="the served model (default: the service's default)")
    nodes = p.add_mutually_exclusive_group(required=True)
    nodes.add_argument(
        "--heads", metavar="all|L,L", help="ablate every head of these layers ('all': every layer)"
    )
    nodes.add_argument(
        "--neurons", nargs="+", metavar="L:I", help="ablate these MLP neurons (layer:index)"
    )
    nodes.add_argument(
        "--latents",
        nargs="+",
        metavar="[TYPE:]L:I",
        help="ablate these autoencoder latents (TYPE: autoencoder_latent, mlp_autoencoder_latent "
        "or attention_autoencoder_latent)",
    )
    p.add_argument(
        "--positions",
        default="last",
        help="tokens to ablate at: 'last' (default), 'all' (each token its own point) or T,T,...",
    )
    p.add_argument(
        "--values",
        default="0",
        help="values to set: 0 (default), v,v,... or 'mean' (the clean run's mean over tokens "
        "of what the ablation overwrites)",
    )
    p.add_argument(
        "--node",
        help="the node whose change to show, as a MirroredNodeIndex JSON "
        "(default: the clean run's top node)",
    )
    p.add_argument("--group", help="the node table's group to read it from (act_times_grad)")
    p.add_argument("--label", help="a label for the sweep's runs")
    p.add_argument("--tag", action="append", help="a tag for the sweep's runs (repeatable)")
    p.add_argument("--top", type=int, default=10, help="how many top cells to print (10)")
    p.add_argument("--json", action="store_true", help="print the sweep's JSON instead")
    p.add_argument("--no-wait", action="store_true", help="print the id and page URL; don't wait")
    p.set_defaults(func=cmd_sweep)
