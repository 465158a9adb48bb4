"""Node records in the store: records jobs (``RecordSet``), the records they build, explanations.

A record set names the TDB "dataset" its records belong to: TDB's UI asks for a record by a
dataset short name (the first part of its page's path, ``gpt2-small``) and a derived scalar type,
so ``dataset_name(model)`` is that short name for a model (``gpt2`` is ``gpt2-small``, as in TDB's
registry; ``_`` is not allowed in it, since the UI splits the path on ``_``), and a request for
(short name, dst) is answered by the newest finished record set of that model that has the dst.

The lifecycle of a records job follows the job table's rules (``models.store.jobs``): a
conditional claim (``queued -> started``, or a started set whose heartbeat is stale), heartbeats,
and an outcome stored only by the attempt that holds the claim.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
import zlib
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from models.store.jobs import new_job_id
from models.store.lifecycle import JobStatus
from models.store.tables import NodeExplanation, NodeRecord, RecordSet, utcnow

RECORDS_TASK = "actq.build_records"  # the Celery task of a records job (``worker.records``)
# The node kinds a records job builds, and the dst their records are stored (and asked) under.
KIND_DSTS = {"mlp_neuron": "mlp_post_act", "attention_head": "attn_write_norm"}
# The served autoencoders' latents: stored under TDB's offline latent dst (what its node pages ask
# ``/neuron_record`` for), in a dataset the UI names ``MODEL_AE`` (``find_record``).
LATENT_KINDS = {
    "mlp_autoencoder_latent": "mlp_autoencoder_latent",
    "attention_autoencoder_latent": "attention_autoencoder_latent",
}
LATENT_SLOTS = {"mlp_autoencoder_latent": "mlp", "attention_autoencoder_latent": "attention"}
DST_LABELS = {
    "mlp_post_act": "MLP neurons",
    "attn_write_norm": "Attention write by token pair",
    "mlp_autoencoder_latent": "MLP autoencoder latents",
    "attention_autoencoder_latent": "Attention autoencoder latents",
}
TDB_SHORT_NAMES = {"gpt2": "gpt2-small"}


def dataset_name(model: str) -> str:
    return TDB_SHORT_NAMES.get(model, model.replace("_", "-"))


def dataset_path(record_set: RecordSet) -> str:
    return f"actq://records/{record_set.id}"


@dataclass(frozen=True)
class Sequence:
    """One sequence of a record: its token ids and one activation per token (per token pair,
    flattened row by row, for an attention head)."""

    tokens: list[int]
    activations: list[float]


def encode_record(top: list[Sequence], random: list[Sequence]) -> bytes:
    """zlib of JSON: token ids as lists, activations as base64 of little-endian float32 (exact
    for the engine's float32 values, and a tenth of the time of writing floats as text)."""
    body = {
        "top": [[s.tokens, _floats(s.activations)] for s in top],
        "random": [[s.tokens, _floats(s.activations)] for s in random],
    }
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 1)


def decode_record(data: bytes) -> tuple[list[Sequence], list[Sequence]]:
    body = json.loads(zlib.decompress(data))
    return (
        [Sequence(t, _unfloats(a)) for t, a in body["top"]],
        [Sequence(t, _unfloats(a)) for t, a in body["random"]],
    )


def _floats(values: list[float]) -> str:
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _unfloats(text: str) -> list[float]:
    packed = array("f")
    packed.frombytes(base64.b64decode(text))
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tolist()


# --- records jobs -----------------------------------------------------------------------------


def create_record_set(session: Session, **fields: Any) -> RecordSet:
    record_set = RecordSet(id=new_job_id(), status=JobStatus.QUEUED.value, **fields)
    session.add(record_set)
    session.flush()
    return record_set


def claim_record_set(
    session: Session, set_id: str, worker: str, lease_seconds: float, max_attempts: int
) -> int | None:
    """Claim a queued set, or a started one whose worker stopped beating; the attempt or None."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=lease_seconds)
    claimable = or_(
        RecordSet.status == JobStatus.QUEUED.value,
        and_(RecordSet.status == JobStatus.STARTED.value, RecordSet.heartbeat_at < stale),
    )
    result = session.execute(
        update(RecordSet)
        .where(RecordSet.id == set_id, claimable, RecordSet.attempts < max_attempts)
        .values(
            status=JobStatus.STARTED.value,
            attempts=RecordSet.attempts + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            done_sequences=0,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.execute(select(RecordSet.attempts).where(RecordSet.id == set_id)).scalar_one()


def _held(set_id: str, attempt: int):
    return and_(
        RecordSet.id == set_id,
        RecordSet.status == JobStatus.STARTED.value,
        RecordSet.attempts == attempt,
    )


def beat(session: Session, set_id: str, attempt: int, done: int | None = None) -> bool:
    """Refresh the heartbeat (and the progress); False if this attempt no longer holds the set."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if done is not None:
        values["done_sequences"] = done
    result = session.execute(
        update(RecordSet)
        .where(_held(set_id, attempt))
        .values(values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def set_size(session: Session, set_id: str, attempt: int, n_sequences: int) -> None:
    session.execute(update(RecordSet).where(_held(set_id, attempt)).values(n_sequences=n_sequences))


def finish_record_set(
    session: Session, set_id: str, attempt: int, records: Iterable[NodeRecord]
) -> bool:
    """Store the records and mark the set finished, if this attempt still holds it."""
    held = session.execute(
        update(RecordSet)
        .where(_held(set_id, attempt))
        .values(status=JobStatus.FINISHED.value, finished_at=utcnow())
    )
    if held.rowcount != 1:
        return False
    session.execute(delete(NodeRecord).where(NodeRecord.record_set_id == set_id))
    for record in records:
        record.record_set_id = set_id
        session.add(record)
    return True


def fail_record_set(session: Session, set_id: str, attempt: int | None, error: dict) -> bool:
    condition = _held(set_id, attempt) if attempt is not None else RecordSet.id == set_id
    result = session.execute(
        update(RecordSet)
        .where(condition)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=utcnow())
    )
    return result.rowcount == 1


# --- reading ----------------------------------------------------------------------------------


def finished_sets(session: Session) -> list[RecordSet]:
    query = (
        select(RecordSet)
        .where(RecordSet.status == JobStatus.FINISHED.value)
        .order_by(RecordSet.finished_at.desc(), RecordSet.id.desc())
    )
    return list(session.scalars(query))


def find_record(
    session: Session, datasets: list[str], dst: str, layer: int, index: int
) -> tuple[RecordSet, NodeRecord] | None:
    """The record of a node in the first of ``datasets`` that has it: a dataset is a short name
    (a model's ``dataset_name``), a record set's name, id or ``actq://records/ID`` path."""
    sets = finished_sets(session)
    for dataset in datasets:
        first, *ae_names = dataset.split("_")  # TDB's UI: MODEL or MODEL_AE[_AE]
        for record_set in sets:
            names = {dataset_name(record_set.model), record_set.name, record_set.id}
            served = set((record_set.autoencoders or {}).values())
            by_model = first in names and set(ae_names) <= served
            if dataset not in names and dataset != dataset_path(record_set) and not by_model:
                continue
            record = session.get(NodeRecord, (record_set.id, dst, layer, index))
            if record is not None:
                return record_set, record
    return None


def models_of(session: Session, dataset: str) -> set[str]:
    """The models a dataset name may mean (its record sets' models, or a model's short name)."""
    return {
        s.model
        for s in finished_sets(session)
        if dataset in (dataset_name(s.model), s.name, s.id, dataset_path(s))
    }


# --- explanations -----------------------------------------------------------------------------


def put_explanation(
    session: Session,
    *,
    model: str,
    dst: str,
    layer: int,
    index: int,
    explanation: str,
    score: float | None,
    author: str | None,
) -> NodeExplanation:
    row = session.get(NodeExplanation, (model, dst, layer, index))
    if row is None:
        row = NodeExplanation(model=model, dst=dst, layer_index=layer, activation_index=index)
        session.add(row)
    row.explanation, row.score, row.author, row.updated_at = explanation, score, author, utcnow()
    session.flush()
    return row


def explanations_of(
    session: Session, models: set[str], dst: str, layer: int, index: int
) -> list[NodeExplanation]:
    query = select(NodeExplanation).where(
        NodeExplanation.model.in_(sorted(models)),
        NodeExplanation.dst == dst,
        NodeExplanation.layer_index == layer,
        NodeExplanation.activation_index == index,
    )
    return list(session.scalars(query))


def has_record(session: Session, model: str, dst: str, layer: int, index: int) -> bool:
    return find_record(session, [dataset_name(model)], dst, layer, index) is not None
