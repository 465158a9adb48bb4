"""``models.store.history`` and ``models.store.run_keys``: filters, paging, baselines, and 100,000 runs.

The scale test inserts 100,000 runs with one executemany per table and checks, on SQLite and on
PostgreSQL, that every history query is answered from an index (no full scan of ``runs`` or
``jobs``, no sort of the whole table) and returns the right page. No wall-clock assertions.
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from models.errors import RequestValidationError
from models.store.history import RunFilter, find_baseline, list_runs, parse_address, runs_query
from models.store.run_keys import ablation_keys, node_key, parse_key
from models.store.runs import canonical_ablations, prompt_hash
from models.store.tables import Job, Run, RunAblation, RunTag

N_JOBS = 50_000  # two runs each: 100,000 runs
PROMPTS = [f"prompt number {i}" for i in range(100)]
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def job_id(i: int) -> str:
    return f"{i:026d}"


def bulk_rows() -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    jobs, runs, ablations, tags = [], [], [], []
    for i in range(N_JOBS):
        jid, model, prompt = job_id(i), f"model-{i % 3}", PROMPTS[i % len(PROMPTS)]
        created = NOW + dt.timedelta(seconds=i)
        jobs.append(
            dict(
                id=jid,
                endpoint="batched_tdb",
                model=model,
                status="finished",
                request_hash=f"{i}",
                created_at=created,
                attempts=1,
                tags=[],
            )
        )
        for index in (0, 1):
            runs.append(
                dict(
                    job_id=jid,
                    index=index,
                    prompt=prompt,
                    prompt_hash=prompt_hash(prompt),
                    model=model,
                    ablations="[]",
                    has_ablations=index == 1,
                    tags=[],
                    created_at=created,
                    loss=float(i),
                )
            )
        ablations.append(dict(job_id=jid, index=1, key=f"mlp_neuron:0:{i % 15},{i % 64}"))
        if i % 500 == 0:
            tags.append(dict(job_id=jid, index=0, tag="rare"))
    return jobs, runs, ablations, tags


def insert_bulk(engine) -> None:
    jobs, runs, ablations, tags = bulk_rows()
    with engine.begin() as conn:
        for table, rows in ((Job, jobs), (Run, runs), (RunAblation, ablations), (RunTag, tags)):
            conn.execute(sa.insert(table.__table__), rows)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def plan(engine, query) -> str:
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).fetchall()
            return "\n".join(row[-1] for row in rows)
        return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + sql))


def assert_indexed(engine, query) -> None:
    text = plan(engine, query)
    if engine.dialect.name == "sqlite":
        # SEARCH: an index range; SCAN ... USING INDEX: an ordered index walk that stops at the
        # page limit; a bare SCAN would read the whole table, a TEMP B-TREE sort all matches.
        bad = [
            line
            for line in text.splitlines()
            if line.startswith("SCAN") and "INDEX" not in line or "TEMP B-TREE" in line
        ]
        assert not bad, text
    else:
        assert "Seq Scan on runs" not in text and "Seq Scan on jobs" not in text, text


def expected_page(predicate, limit: int, before: tuple[str, int] | None = None) -> list[str]:
    """The newest ``limit`` runs matching ``predicate(i, index)``, computed in Python."""
    out = []
    for i in range(N_JOBS - 1, -1, -1):
        for index in (1, 0):
            if before is not None and (job_id(i), index) >= before:
                continue
            if predicate(i, index):
                out.append(f"{job_id(i)}/{index}")
                if len(out) == limit:
                    return out
    return out


FILTERS = [
    (RunFilter(), lambda i, n: True),
    (RunFilter(model="model-1"), lambda i, n: i % 3 == 1),
    (RunFilter(prompt=PROMPTS[7]), lambda i, n: i % 100 == 7),
    (RunFilter(has_ablations=False), lambda i, n: n == 0),
    (RunFilter(ablates=["mlp_neuron:0:3,3"]), lambda i, n: n == 1 and i % 15 == 3 and i % 64 == 3),
    (RunFilter(tags=["rare"]), lambda i, n: n == 0 and i % 500 == 0),
    (
        RunFilter(model="model-2", prompt=PROMPTS[5], has_ablations=True),
        lambda i, n: i % 3 == 2 and i % 100 == 5 and n == 1,
    ),
    (RunFilter(status="finished", endpoint="batched_tdb"), lambda i, n: True),
]


def test_history_at_100k_runs_is_answered_from_indexes(sessions):
    engine = sessions.kw["bind"]
    insert_bulk(engine)
    before = (job_id(30_000), 1)
    with sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Run)) == 2 * N_JOBS
        for f, predicate in FILTERS:
            assert_indexed(engine, runs_query(f).limit(51))
            assert_indexed(engine, runs_query(f, before).limit(51))
            runs, cursor = list_runs(session, f, limit=50)
            assert [r.address for r in runs] == expected_page(predicate, 50), f
            if cursor is not None:
                rest, _ = list_runs(session, f, limit=50, cursor=cursor)
                assert [r.address for r in rest] == expected_page(
                    predicate, 50, parse_address(cursor)
                ), f


# --- filters, baselines and edits on a few runs ---------------------------------------------


def _add_run(
    session,
    jid: str,
    *,
    prompt="p",
    model="m",
    ablations=None,
    status="finished",
    targets=(" a",),
    created=NOW,
    endpoint="batched_tdb",
    tags=(),
):
    job = Job(
        id=jid,
        endpoint=endpoint,
        model=model,
        status=status,
        request_hash=jid,
        created_at=created,
        attempts=1,
        tags=list(tags),
    )
    job.runs.append(
        Run(
            index=0,
            prompt=prompt,
            prompt_hash=prompt_hash(prompt),
            model=model,
            target_tokens=list(targets),
            distractor_tokens=[],
            ablations=canonical_ablations(ablations),
            has_ablations=bool(ablations),
            tags=list(tags),
            created_at=created,
        )
    )
    session.add(job)
    return job.runs[0]


HEAD = {
    "nodeType": "attention_head",
    "tensorIndices": [3, 1, 2],
    "layerIndex": 1,
    "passType": "forward",
}


def test_ablation_and_tag_rows_follow_the_columns(sessions):
    with sessions.begin() as session:
        run = _add_run(session, job_id(1), ablations=[{"nodeIndex": HEAD, "value": 0}], tags=["x"])
    with sessions.begin() as session:
        run = session.get(Run, (job_id(1), 0))
        assert [r.key for r in run.ablation_rows] == ["attention_head:1:3,*,2"]
        assert [r.tag for r in run.tag_rows] == ["x"]
        run.tags = ["y", "x"]
        run.ablations = "[]"
    with sessions() as session:
        assert session.scalars(sa.select(RunTag.tag).order_by(RunTag.tag)).all() == ["x", "y"]
        assert session.scalars(sa.select(RunAblation.key)).all() == []
    with sessions.begin() as session:
        session.delete(session.get(Job, job_id(1)))
    with sessions() as session:
        assert session.scalars(sa.select(RunTag.tag)).all() == []


def test_baseline_prefers_the_newest_clean_run_of_the_same_endpoint(sessions):
    with sessions.begin() as session:
        _add_run(session, job_id(1), created=NOW)  # clean
        _add_run(session, job_id(2), created=NOW, endpoint="batched")  # clean, other endpoint
        _add_run(session, job_id(3), status="queued")  # clean, not finished
        _add_run(session, job_id(4), targets=(" b",))  # other target
        _add_run(session, job_id(5), model="other")  # other model
        _add_run(session, job_id(6), prompt="q")  # other prompt
        ablated = _add_run(session, job_id(7), ablations=[{"nodeIndex": HEAD, "value": 0}])
    with sessions() as session:
        ablated = session.get(Run, (job_id(7), 0))
        assert find_baseline(session, ablated).address == f"{job_id(1)}/0"
        assert find_baseline(session, session.get(Run, (job_id(1), 0))).address == f"{job_id(2)}/0"
        assert find_baseline(session, session.get(Run, (job_id(6), 0))) is None


# --- keys -----------------------------------------------------------------------------------


def test_node_keys_name_what_tdb_ablates():
    assert node_key(HEAD) == "attention_head:1:3,*,2"
    neuron = {
        "nodeType": "mlp_neuron",
        "tensorIndices": [2, 173],
        "layerIndex": 0,
        "passType": "backward",
    }
    assert node_key(neuron) == "mlp_neuron:0:2,173"
    assert (
        node_key({"nodeType": "layer", "tensorIndices": [4, None], "layerIndex": None})
        == "layer:-:4,*"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("attention_head:1:3,1,2", "attention_head:1:3,*,2"),
        ("attention_head:1:3,*,2", "attention_head:1:3,*,2"),
        (
            ' {"nodeType": "mlp_neuron", "tensorIndices": [2, 7], "layerIndex": 0}',
            "mlp_neuron:0:2,7",
        ),
        ("mlp.post_act:0:All,3:forward", "mlp.post_act:0:All,3:forward"),
        ("mlp.post_act:0:All,3:", "mlp.post_act:0:All,3:forward"),
        ("layer:-:4,0", "layer:-:4,0"),
    ],
)
def test_parse_key_accepts_compact_and_json_forms(text, key):
    assert parse_key(text) == key


@pytest.mark.parametrize("text", ["attention_head", "x:one:1", "x:1:a", "{not json", "[1]"])
def test_parse_key_refuses_what_it_cannot_read(text):
    with pytest.raises(RequestValidationError):
        parse_key(text)


def test_ablation_keys_of_both_ablation_forms():
    node = [
        {"nodeIndex": HEAD, "value": 1},
        {"nodeIndex": dict(HEAD, tensorIndices=[3, 0, 2]), "value": 0},
    ]
    assert ablation_keys(canonical_ablations(node)) == ["attention_head:1:3,*,2"]
    spec = [
        {
            "index": {
                "activationLocationType": "mlp.post_act",
                "tensorIndices": ["All", 0],
                "layerIndex": 0,
                "passType": "forward",
            },
            "value": 0.0,
        }
    ]
    assert ablation_keys(canonical_ablations(spec)) == ["mlp.post_act:0:All,0:forward"]
    assert ablation_keys("[]") == [] and ablation_keys(None) == []


@pytest.mark.parametrize(
    ("text", "address"), [("J/3", ("J", 3)), ("J", ("J", 0)), ("J/", ("J", 0))]
)
def test_run_addresses(text, address):
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "/1", "J/x", "J/-1"])
def test_bad_run_addresses(text):
    with pytest.raises(RequestValidationError):
        parse_address(text)
