"""Records jobs beyond neurons and heads: the served autoencoders' latents as a node kind (built
against the engine's own offline latent DST, stored under TDB's dst and served in the dataset
TDB's UI names ``MODEL_AE``), and records jobs in the outbox and under the reaper, like jobs."""

from __future__ import annotations

import datetime as dt

import pytest

from models.settings import Settings
from models.store import record_recovery
from models.store.node_records import create_record_set
from models.store.tables import RecordSet, utcnow
from tests.conftest import queued_messages
from tests.shared_dir import GOLDEN
from worker.reaper import Reaper
from worker.records import execute_records

engine = pytest.importorskip("worker.engine")

MLP_AE = GOLDEN / "autoencoders" / "ae-mlp-post-act-tiny"
ATTN_AE = GOLDEN / "autoencoders" / "ae-resid-delta-attn-tiny"
CORPUS = "\n".join(
    [
        "Paris is the capital of France, and Berlin is the capital of Germany.",
        "The quick brown fox jumps over the lazy dog.",
        "Rome, Madrid and Lisbon are cities in the south of Europe.",
        "One two three four five six seven eight nine ten eleven twelve thirteen.",
    ]
)
UI = {"Origin": "http://localhost:1234"}
LEASE = 60.0


@pytest.fixture(scope="module")
def with_aes(golden_model_dir):
    return engine.load_model(
        str(golden_model_dir),
        "cpu",
        mlp_autoencoder=str(MLP_AE),
        attention_autoencoder=str(ATTN_AE),
    )


@pytest.fixture
def ae_app(tmp_path, sqlite_url, golden_model_dir):
    from api.app import create_app

    return create_app(
        {
            "TESTING": True,
            "data_dir": tmp_path,
            "database_url": sqlite_url,
            "broker_url": f"filesystem://{tmp_path / 'broker'}",
            "model": str(golden_model_dir),
            "mlp_autoencoder": str(MLP_AE),
            "attention_autoencoder": str(ATTN_AE),
        }
    )


def _latents(model, dst: str, prompt: str, layer: int, index: int) -> list[float]:
    request = {
        "inferenceRequestSpec": {"prompt": prompt, "ablationSpecs": None, "lossFnConfig": None},
        "derivedScalarsRequestSpec": {
            "dst": dst,
            "layerIndex": layer,
            "activationIndex": index,
            "passType": "forward",
        },
    }
    answer = engine.run("derived_scalars", request, model)
    return answer["derivedScalarsResponseData"]["activations"]


def test_latent_records_are_the_engines_offline_latents_served_as_tdb_asks(ae_app, with_aes):
    client = ae_app.test_client()
    kinds = ["mlp_neuron", "mlp_autoencoder_latent", "attention_autoencoder_latent"]
    body = {"corpus": CORPUS, "kinds": kinds, "topK": 2, "randomK": 1, "seqLen": 64}
    response = client.post("/v1/records", json=body)
    assert response.status_code == 202, response.get_json()
    set_id = response.get_json()["id"]
    assert response.get_json()["autoencoders"] == {
        "mlp": "ae-mlp-post-act-tiny",
        "attention": "ae-resid-delta-attn-tiny",
    }
    sessions = ae_app.extensions["actq.sessionmaker"]
    done = execute_records(
        sessions, set_id, model=lambda: with_aes, worker="w", lease_seconds=LEASE, max_attempts=3
    )
    assert done == "finished"
    listed = client.post("/neuron_datasets_metadata", headers=UI).get_json()
    names = {(d["shortName"], d["derivedScalarType"]) for d in listed}
    model = with_aes.name
    assert names == {
        (model, "mlp_post_act"),
        (f"{model}_ae-mlp-post-act-tiny", "mlp_autoencoder_latent"),
        (f"{model}_ae-resid-delta-attn-tiny", "attention_autoencoder_latent"),
    }
    for dst, ae, layer, index in (
        ("mlp_autoencoder_latent", "ae-mlp-post-act-tiny", 1, 9),
        ("attention_autoencoder_latent", "ae-resid-delta-attn-tiny", 2, 17),
    ):
        # what TDB's node page for a latent sends (datasets: MODEL_AE), and what it gets
        node = {"dst": dst, "layerIndex": layer, "activationIndex": index}
        asked = {**node, "datasets": [f"{model}_{ae}"]}
        record = client.post("/neuron_record", json=asked, headers=UI).get_json()
        top = record["topActivations"][0]
        prompt = "".join(t["token"] for t in top)
        assert prompt in CORPUS
        expected = _latents(with_aes, dst, prompt, layer, index)
        assert [t["scalar"] for t in top] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert record["maxActivation"] == pytest.approx(max(expected), rel=1e-4)
        other = client.post("/neuron_record", json={**asked, "datasets": [f"{model}_nope"]})
        assert other.status_code == 404


def test_latent_records_need_the_ae_served(app):
    client = app.test_client()
    refused = client.post(
        "/v1/records", json={"corpus": "x", "kinds": ["mlp_neuron", "attention_autoencoder_latent"]}
    )
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert error["path"] == "kinds.1" and "attention autoencoder" in error["message"]


# --- the outbox and the reaper ------------------------------------------------------------------


def _set(sessions, published=True) -> str:
    with sessions.begin() as session:
        record_set = create_record_set(
            session,
            name="s",
            model="m",
            kinds=["mlp_neuron"],
            top_k=1,
            random_k=0,
            seq_len=8,
            corpus_name="c",
            corpus_sha256="0" * 64,
            corpus=b"",
        )
        if published:
            record_set.published_at = record_set.created_at
        return record_set.id


def _get(sessions, set_id) -> RecordSet:
    with sessions() as session:
        return session.get(RecordSet, set_id)


def _reaper(tmp_path, sessions, db_url, max_attempts=3) -> Reaper:
    from api.queue import make_producer
    from models.store.lifecycle import TASK_NAME, queue_name
    from models.store.node_records import RECORDS_TASK

    settings = Settings(
        database_url=db_url,
        broker_url=f"filesystem://{tmp_path / 'broker'}",
        lease_seconds=LEASE,
        max_attempts=max_attempts,
    )
    producer = make_producer(settings)

    def send(task):
        return lambda set_id, model: producer.send_task(
            task, args=[set_id], queue=queue_name(model)
        )

    return Reaper(settings, sessions, send(TASK_NAME), None, send(RECORDS_TASK))


def _claim(sessions, set_id):
    from models.store.node_records import claim_record_set

    with sessions.begin() as session:
        return claim_record_set(session, set_id, "w1", LEASE, 3)


def test_the_reaper_requeues_a_dead_workers_set_and_publishes_it_once(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url)
    unpublished, published, stale = _set(sessions, False), _set(sessions), _set(sessions)
    assert _claim(sessions, stale) == 1
    later = utcnow() + dt.timedelta(seconds=LEASE + 1)
    sweep = reaper.sweep(now=later)
    assert sweep.records_requeued == [stale]
    assert sorted(sweep.records_published) == sorted([unpublished, stale])
    assert len(queued_messages(tmp_path)) == 2
    assert _get(sessions, stale).status == "queued" and _get(sessions, stale).worker is None
    assert _get(sessions, published).published_at is not None
    assert reaper.sweep(now=later).records_published == []
    assert _claim(sessions, stale) == 2  # the next worker takes it: attempt 2


def test_a_fresh_unpublished_set_is_left_to_the_api_and_lost_messages_are_resent(
    tmp_path, sessions, db_url
):
    reaper = _reaper(tmp_path, sessions, db_url)
    fresh = _set(sessions, False)
    assert reaper.sweep().records_published == []
    with sessions.begin() as session:
        assert record_recovery.forget_set_publications(session) == 0  # it was never published
    done = _set(sessions)
    with sessions.begin() as session:
        assert record_recovery.forget_set_publications(session) == 1
    later = utcnow() + dt.timedelta(seconds=5)
    assert sorted(reaper.sweep(now=later).records_published) == sorted([fresh, done])


def test_a_set_lost_on_every_attempt_fails_with_worker_lost(tmp_path, sessions, db_url):
    reaper = _reaper(tmp_path, sessions, db_url, max_attempts=1)
    set_id = _set(sessions)
    assert _claim(sessions, set_id) == 1
    sweep = reaper.sweep(now=utcnow() + dt.timedelta(seconds=LEASE + 1))
    assert sweep.records_failed == [set_id]
    failed = _get(sessions, set_id)
    assert failed.status == "failed" and failed.error["type"] == "worker_lost"


def test_the_api_marks_its_set_published(app):
    response = app.test_client().post("/v1/records", json={"corpus": CORPUS})
    assert response.status_code == 202
    sessions = app.extensions["actq.sessionmaker"]
    assert _get(sessions, response.get_json()["id"]).published_at is not None
