"""Configuration from ``ACTQ_*`` environment variables, with defaults that give the embedded mode.

Nothing reads configuration at import time: callers build ``Settings()`` (or pass overrides) when
they start. Database and broker URLs are accepted as people write them and translated here into
what SQLAlchemy and kombu need, so every process derives the same URLs the same way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "tiny-gpt2"
DEFAULT_API_URL = "http://127.0.0.1:8000"


class Settings(BaseSettings):
    """Every knob of the service; each field is read from ``ACTQ_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="ACTQ_", extra="ignore")

    database_url: str | None = None  # default: SQLite file in the data dir
    broker_url: str | None = None  # default: kombu filesystem transport in the data dir
    model: str = DEFAULT_MODEL  # what a worker serves: a name, hub id, DIR or NAME=DIR
    models: str | None = None  # what the API accepts, comma-separated; default: ``model``
    device: str | None = None
    # what a worker computes in (worker.engine.loading.COMPUTE_DTYPES); bf16/fp16 checkpoints are
    # upcast to float32 unless this says otherwise. A bad value stops every command at startup.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # the AEs a worker serves with its model: a folder (TDB or SAELens format) or NAME=DIR
    mlp_autoencoder: str | None = None
    attention_autoencoder: str | None = None
    torch_threads: int = Field(default=0, ge=0)  # a worker's intra-op threads; 0: every core
    batch_jobs: int = Field(default=8, ge=1)  # waiting jobs a worker runs in shared passes; 1: off
    data_dir: Path | None = None
    api_url: str = DEFAULT_API_URL  # where the CLI finds a running service
    api_key: str | None = None  # the key the CLI and api.client send (Authorization: Bearer)

    max_wait_seconds: float = Field(default=60.0, gt=0)  # cap of ?wait= on /v1 routes
    max_waiters: int = Field(default=32, gt=0)  # requests waiting at once, per API process
    tdb_wait_seconds: float = Field(default=600.0, gt=0)  # how long TDB-compatible routes wait
    lease_seconds: float = Field(default=600.0, gt=0)  # a heartbeat older than this is stale
    heartbeat_seconds: float | None = Field(default=None, gt=0)  # default: lease / 10, <= 30
    visibility_timeout_seconds: int | None = Field(default=None, gt=0)  # default: the lease
    worker_pool: str = "prefork"
    worker_alive_file: Path | None = None  # touched every few seconds by a running worker

    # Reliability (worker.reaper, worker.tasks): attempts, the reaper's period, time limits.
    max_attempts: int = Field(default=3, ge=1)  # claims of one job before it fails for good
    reap_seconds: float = Field(default=5.0, gt=0)  # how often each worker's reaper sweeps
    job_time_limit: float | None = Field(default=3600.0, gt=0)  # hard: the process is killed
    job_soft_time_limit: float | None = Field(default=None, gt=0)  # default: 95% of the hard
    # Test and rehearsal knob, off by default: when on, a job tagged ``debug-delay=SECONDS``
    # sleeps that long in its engine stage (to kill a worker mid-job, to pass a time limit).
    debug_delays: bool = False

    # Input limits (api.limits): answered with 413 or 422 naming the field.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_prompt_tokens: int | None = Field(default=None, gt=0)  # default: the context window
    max_top_k: int = Field(default=5000, gt=0)  # topAndBottomK, numTopTokens, numTokens, ...
    max_sub_requests: int = Field(default=64, gt=0)  # per batched / batched_tdb request
    max_specs_per_sub_request: int = Field(default=64, gt=0)  # processingRequestSpecByName
    # Cost bounds (models.checks.cost): a request's estimated response size and worker memory.
    max_response_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_job_memory_bytes: int = Field(default=8 * 1024 * 1024 * 1024, gt=0)
    # The worker's guard on a running job's allocations (worker.watch); 0 turns it off.
    job_memory_guard_bytes: int | None = Field(default=None, ge=0)  # default: 2 x the above
    # Bounded parsing (models.checks.json_shape): the raw JSON's shape, before the wire models.
    max_json_depth: int = Field(default=32, gt=0)
    max_json_items_per_container: int = Field(default=10_000, gt=0)
    max_json_items: int = Field(default=200_000, gt=0)
    max_tags: int = Field(default=20, ge=0)
    max_tag_chars: int = Field(default=100, gt=0)
    max_label_chars: int = Field(default=200, gt=0)
    max_corpus_bytes: int = Field(default=8 * 1024 * 1024, gt=0)  # a records job's corpus
    # A sweep (models.checks.sweeps): its points, and all its responses together.
    max_sweep_points: int = Field(default=4096, gt=0)
    max_sweep_response_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)

    # API keys and rate limits (api.auth, api.ratelimit).
    rate_per_minute: float = Field(default=1200.0, ge=0)  # per API key; 0: no limit
    rate_burst: int = Field(default=120, gt=0)  # requests a key may make at once
    # Cross-site requests (api.security): comma-separated origins (scheme://host:port) that may
    # make state-changing requests besides the service's own; host names an open service
    # answers for besides loopback ones.
    allowed_origins: str = ""
    allowed_hosts: str = ""
    allow_open_bind: bool = False  # serve other hosts with no API keys (trusted networks only)

    def data_path(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        from models.model_meta import default_data_dir

        return Path(default_data_dir())

    def database(self) -> str:
        """The SQLAlchemy URL, with actq's own driver choice."""
        url = self.database_url or f"sqlite:///{self.data_path() / 'actq.db'}"
        return sqlalchemy_url(url)

    def broker(self) -> str:
        return self.broker_url or f"filesystem://{self.data_path() / 'broker'}"

    def served_models(self) -> list[str]:
        if self.models:
            return [m.strip() for m in self.models.split(",") if m.strip()]
        return [self.model]

    def allowed_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    def allowed_host_names(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    def heartbeat_interval(self) -> float:
        if self.heartbeat_seconds is not None:
            return self.heartbeat_seconds
        return max(0.5, min(30.0, self.lease_seconds / 10))

    def visibility_timeout(self) -> int:
        """Redis gives an unacknowledged message to another worker after this (the lease)."""
        if self.visibility_timeout_seconds is not None:
            return self.visibility_timeout_seconds
        return max(1, math.ceil(self.lease_seconds))

    def job_memory_guard(self) -> int | None:
        """Bytes a running job may allocate beyond what its worker holds; None: no guard."""
        if self.job_memory_guard_bytes is not None:
            return self.job_memory_guard_bytes or None
        return 2 * self.max_job_memory_bytes

    def soft_time_limit(self) -> float | None:
        """Seconds of engine time after which a job is interrupted and fails with ``timeout``."""
        if self.job_soft_time_limit is not None:
            return self.job_soft_time_limit
        return None if self.job_time_limit is None else self.job_time_limit * 0.95


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` use psycopg 3; other URLs pass unchanged."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        return f"postgresql+psycopg://{rest}"
    return url


FILESYSTEM_TRANSPORT = "models.filesystem_broker:Transport"


def broker_transport(url: str) -> tuple[str, dict]:
    """The kombu URL and transport options for a broker URL.

    ``filesystem:///some/dir`` names the folder that the serverless filesystem transport uses
    (kombu itself ignores the path, so it is turned into transport options here).
    """
    parts = urlsplit(url)
    if parts.scheme != "filesystem":
        return url, {}
    folder = Path(parts.netloc + parts.path or ".").expanduser()
    queue_dir = str(folder / "queue")
    return "filesystem://", {
        "data_folder_in": queue_dir,
        "data_folder_out": queue_dir,
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }


def celery_config(settings: Settings) -> dict:
    """Celery settings shared by the producer (API) and the consumer (worker).

    Late acks with prefetch 1: a worker killed mid-job leaves its message to be delivered again,
    and the claim step makes the rerun safe. Results are ignored: the jobs table is the truth.
    """
    url, options = broker_transport(settings.broker())
    if url.startswith(("redis://", "rediss://", "redis+socket://")):
        # Redis hands an unacknowledged message to another worker after the visibility timeout
        # (the lease); look for such messages often enough that this is the real bound.
        timeout = settings.visibility_timeout()
        options["visibility_timeout"] = timeout
        options["unacked_restore_interval"] = max(1, min(10, timeout // 4))
        options["unacked_restore_throttle"] = 1
    return {
        "broker_url": url,
        # a filesystem broker is kombu's with atomic writes (models.filesystem_broker)
        "broker_transport": FILESYSTEM_TRANSPORT if url.startswith("filesystem://") else None,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_ignore_result": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


def ensure_broker_folders(url: str) -> None:
    """Create the folders of a filesystem broker (kombu expects them to exist)."""
    _, options = broker_transport(url)
    for key in ("data_folder_in", "control_folder"):
        if key in options:
            os.makedirs(options[key], exist_ok=True)
