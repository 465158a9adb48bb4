"""``actq run ENDPOINT REQUEST.json``: one request through the engine in-process, no services.

The response JSON goes to stdout; a request error goes to stderr as actq's error JSON
(``{"error": {"type", "message", "path"}}``) with exit status 2, so that ``> response.json``
never captures an error as if it were a response."""

from __future__ import annotations

import argparse
import json
import sys

from api.cli.common import EXIT_REQUEST_ERROR, read_request
from api.cli.processes import add_autoencoder_options
from models.errors import ActqError, RequestValidationError
from models.settings import Settings
from models.store.lifecycle import ENDPOINTS


def cmd_run(args: argparse.Namespace) -> int:
    from models.wire.encoding import dumps

    raw = read_request(args.request)
    try:
        request = json.loads(raw) if raw and raw.strip() else None
    except json.JSONDecodeError as error:
        print(dumps(RequestValidationError(f"malformed JSON: {error}").to_dict()), file=sys.stderr)
        return EXIT_REQUEST_ERROR
    settings = Settings()
    from worker.engine import load_model, run

    try:
        model = load_model(
            args.model or settings.model,
            device=args.device or settings.device,
            dtype=settings.dtype,
            mlp_autoencoder=args.mlp_autoencoder or settings.mlp_autoencoder,
            attention_autoencoder=args.attention_autoencoder or settings.attention_autoencoder,
        )
        response = run(args.endpoint, request, model)
    except ActqError as error:
        print(dumps(error.to_dict()), file=sys.stderr)
        return EXIT_REQUEST_ERROR
    sys.stdout.write(dumps(response) + "\n")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("run", help="run one request through the engine in-process")
    p.add_argument("endpoint", choices=ENDPOINTS, help="the TDB route to answer")
    p.add_argument("request", nargs="?", help="request JSON file, or - for stdin")
    p.add_argument("--model", help="model name or directory (default: ACTQ_MODEL)")
    p.add_argument("--device", help="cpu or cuda (default: ACTQ_DEVICE or the best available)")
    add_autoencoder_options(p)
    p.set_defaults(func=cmd_run)
