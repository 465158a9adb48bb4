"""Parity with TDB: every golden case, answered through `actq run`, matches TDB's own answer.

The comparison is the golden set's own `compare.py` (tolerances, tie handling), imported from the
shared folder, so the test judges exactly as the release check does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from api.cli import main
from tests.conftest import needs_autoencoders
from tests.shared_dir import CASES, GOLDEN, ORACLE_MODEL

# The cases without autoencoders (001-076); the AE cases are answered with their AEs loaded.
CASE_FILES = [
    f for f in sorted(CASES.glob("*.json")) if not needs_autoencoders(json.loads(f.read_text()))
]


def _load_compare():
    spec = importlib.util.spec_from_file_location("golden_compare", GOLDEN / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


@pytest.mark.parametrize("case_file", CASE_FILES, ids=lambda f: f.stem)
def test_actq_run_matches_tdb(case_file, tmp_path, capsys):
    case = json.loads(case_file.read_text())
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(case["request"]))
    code = main(
        [
            "run",
            case["endpoint"],
            str(request_file),
            "--model",
            str(ORACLE_MODEL),
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr()
    assert code in (0, 2)
    # a response on stdout; a request error on stderr (exit 2), never on stdout
    out = json.loads(printed.out if code == 0 else printed.err.strip().splitlines()[-1])
    if code == 2:
        assert printed.out == ""
    ours = {"error": out["error"]} if code == 2 else {"response": out}
    problem = compare.compare_case(case, ours)
    assert problem is None, problem
    if case["error"] is not None:
        assert 400 <= _status(out["error"]) < 500


def _status(error: dict) -> int:
    from models.errors import (
        ActqError,
        NotFoundError,
        RequestError,
        RequestValidationError,
        UnsupportedError,
    )

    classes = (ActqError, RequestError, RequestValidationError, UnsupportedError, NotFoundError)
    return next(c.status for c in classes if c.type == error["type"])


def test_actq_run_reads_stdin_and_exits_2_on_a_bad_request():
    case = json.loads((CASES / "066-err-target-not-one-token.json").read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "run",
            "batched_tdb",
            "-",
            "--model",
            str(ORACLE_MODEL),
            "--device",
            "cpu",
        ],
        input=json.dumps(case["request"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (2, "")  # an error is never on stdout
    error = json.loads(proc.stderr.strip().splitlines()[-1])["error"]
    assert error["message"] == "' elephantine' decoded to [20950, 500]; wanted exactly 1 token"
    assert error["path"] == "subRequests.0.targetTokens.0"
