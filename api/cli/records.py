"""``actq records build CORPUS``: a records job on the running service, waited for with progress.

The corpus is a local text file of documents (one per line, or JSON Lines with a ``text``
field); the command uploads it (``POST /v1/records``) and prints a progress line until the job
is final, then the record set as JSON. TDB's UI then finds the records under the dataset name it
prints (``gpt2-small`` for ``gpt2``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from api.cli.common import print_json
from models.settings import Settings

POLL_SECONDS = 1.0
FINAL = ("finished", "failed", "canceled")


def cmd_build(args: argparse.Namespace) -> int:
    from api.client import Client, ClientError

    client = Client(args.records_url or args.url or Settings().api_url)
    path = Path(args.corpus)
    body = {
        "corpus": path.read_text(encoding="utf-8"),
        "corpusName": path.name[:200],
        "kinds": args.kinds,
        "topK": args.top_k,
        "randomK": args.random_k,
        "seqLen": args.seq_len,
    }
    if args.name:
        body["name"] = args.name
    params = {"model": args.model} if args.model else None
    response = client.http.post(
        f"{client.url}/v1/records", json=body, params=params, timeout=client.timeout
    )
    if response.status_code >= 400:
        raise ClientError(response.status_code, response.json())
    view = response.json()
    print(f"actq: record set {view['id']} ({client.url}{view['url']})", file=sys.stderr)
    while view["status"] not in FINAL:
        time.sleep(POLL_SECONDS)
        view = client._checked(client._get(view["url"])).json()
        done, total = view["progress"]["sequences"], view["progress"]["of"]
        print(f"\ractq: {view['status']} {done}/{total or '?'} sequences", end="", file=sys.stderr)
    print(file=sys.stderr)
    print_json(view)
    return 0 if view["status"] == "finished" else 1


def add_commands(sub) -> None:
    p = sub.add_parser("records", help="node records (top-activating sequences) for TDB's UI")
    records = p.add_subparsers(dest="records_command", required=True)
    build = records.add_parser("build", help="build records over a corpus, as a job; waits")
    build.add_argument("corpus", help="a text file of documents, one per line (or JSON Lines)")
    build.add_argument("--url", dest="records_url", help="service URL (default: ACTQ_API_URL)")
    build.add_argument("--model", help="the served model (default: the service's default)")
    build.add_argument("--name", help="the record set's name (default: the dataset name)")
    build.add_argument(
        "--kinds", nargs="+", default=["mlp_neuron", "attention_head"], help="node kinds"
    )
    build.add_argument("--top-k", type=int, default=20, help="top sequences per node")
    build.add_argument("--random-k", type=int, default=10, help="random sequences per node")
    build.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    build.set_defaults(func=cmd_build)
