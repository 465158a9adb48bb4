"""What every ``actq`` command shares: reading a request file, printing JSON, exit codes, the
client of a running service."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from models.settings import Settings

EXIT_REQUEST_ERROR = 2


def read_request(path: str | None) -> bytes | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdin.buffer.read()
    return Path(path).read_bytes()


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def client_of(args: argparse.Namespace):
    from api.client import Client

    return Client(args.url or Settings().api_url)


def cut_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle cut: prompts differ at their end."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
