"""The ``actq`` command: the one composition root of the project.

Commands that talk to a running service (``submit``, ``status``, ``result``, ``wait``,
``history``) use ``api.client``; ``api``, ``worker``, ``reap`` and ``db upgrade`` start the
production pieces (``keys`` manages API keys); ``up`` and ``demo`` the
embedded stack; ``run`` runs the engine in-process. Only ``run``, ``worker`` and ``reap`` reach
into ``worker/`` (``reap`` without torch), and only inside the command.


Each command group is a module of this package with ``add_commands(subparsers)``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from api.cli import compare, engine, keys, processes, records, service, sweep
from api.cli.common import EXIT_REQUEST_ERROR
from models.errors import ActqError

COMMAND_MODULES = (engine, processes, service, compare, keys, records, sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actq",
        description="actq: an activation server for transformer interpretability that runs "
        "Transformer Debugger (TDB) requests as jobs. `actq up` starts a self-contained service; "
        "`actq run ENDPOINT REQUEST.json` answers one request in-process.",
    )
    parser.add_argument(
        "--url", help="service URL (default: ACTQ_API_URL or http://127.0.0.1:8000)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from api.client import ClientError

    try:
        return args.func(args)
    except ClientError as error:
        print(f"actq: {error}", file=sys.stderr)
        return 1
    except ActqError as error:
        print(f"actq: {error}", file=sys.stderr)
        return EXIT_REQUEST_ERROR
    except KeyboardInterrupt:
        return 130
