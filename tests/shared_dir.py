"""Where the shared reference material (spec, golden cases, oracle model) lives for tests.

CI lays `shared/` beside the clone; `ACTQ_SHARED_DIR` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(os.environ.get("ACTQ_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
GOLDEN = SHARED / "golden"
CASES = GOLDEN / "cases"
ORACLE_MODEL = GOLDEN / "oracle-gpt2-tiny"
