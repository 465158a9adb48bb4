"""Answers in arrival order, per client, on the TDB-compatible inference routes.

TDB's server handles inference one request at a time, so its UI gets answers in the order it sent
the requests and relies on that: an invalid pair sent after a slow copy must not be answered
first, nor a cached clean answer before the ablated pair sent earlier. actq runs requests
concurrently (a 4xx or a cache hit is ready at once), so this module holds each answer back until
every earlier request *of the same client* has been answered. Requests still run in parallel, and
different clients never wait for each other.

A client is the ``Origin`` header, the connection's address and the credentials it presents (a
key, hashed): one browser tab of TDB's UI on one machine. The connection's port is not part of it,
since a browser spreads one page's requests over several connections. A request without
``Origin`` is not from a page in a browser (a script, curl) and is answered as soon as it is ready.

Mechanism: on arrival (``before_request``, before authentication, so a 401 or 429 keeps its place)
the request takes a ticket, the client's next number; once its response is built
(``after_request``) it waits until no earlier ticket of the client is open, and its ticket closes
when the response has been sent (``call_on_close``), so a large body is on the wire before the
next answer leaves. With a Redis broker the tickets live in Redis, shared by every gunicorn
process and API machine; each open ticket has a lease that its process renews, so a process that
dies mid-request holds its successors back for a few seconds only. Without Redis (the embedded
mode: one process) they live in memory. If Redis cannot be reached, answers are let through
unordered, as before, rather than not at all.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from typing import Protocol

from flask import Flask, Response, current_app, g, request

from models.store.lifecycle import ENDPOINTS

log = logging.getLogger(__name__)

ORDERED_PATHS = frozenset(f"/{endpoint}" for endpoint in ENDPOINTS)
KEY_PREFIX = "actq:tdb-order:"
LEASE_SECONDS = 15  # an open ticket whose process stopped renewing it is skipped after this
RENEW_SECONDS = 5
POLL_SECONDS = (0.002, 0.02)  # first and longest pause between two looks at the turn (Redis)
COUNTER_TTL_SECONDS = 86400  # a client silent for a day starts again at ticket 1

# KEYS: counter, open set. ARGV: lease key prefix, lease seconds, counter ttl. Returns the ticket.
TAKE = """
local ticket = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ticket, ticket)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', ARGV[1] .. ticket, '1', 'EX', ARGV[2])
return ticket
"""

# KEYS: open set. ARGV: lease key prefix, ticket. 1 when no live earlier ticket is open.
TURN = """
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #head == 0 or tonumber(head[1]) >= tonumber(ARGV[2]) then return 1 end
  if redis.call('EXISTS', ARGV[1] .. head[1]) == 1 then return 0 end
  redis.call('ZREM', KEYS[1], head[1])
end
"""


class Turns(Protocol):
    def take(self, client: str) -> int:
        """The client's next ticket, open from now on."""

    def wait_turn(self, client: str, ticket: int, timeout: float) -> bool:
        """Block until every earlier open ticket of the client is closed (False: timed out)."""

    def close(self, client: str, ticket: int) -> None:
        """Close the ticket; the client's next answer may leave."""


class MemoryTurns:
    """Tickets of one process (the embedded mode)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._next: dict[str, int] = {}
        self._open: dict[str, set[int]] = {}

    def take(self, client: str) -> int:
        with self._changed:
            ticket = self._next.get(client, 0) + 1
            self._next[client] = ticket
            self._open.setdefault(client, set()).add(ticket)
            return ticket

    def wait_turn(self, client: str, ticket: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(
                lambda: min(self._open.get(client) or {ticket}) >= ticket, timeout
            )

    def close(self, client: str, ticket: int) -> None:
        with self._changed:
            tickets = self._open.get(client, set())
            tickets.discard(ticket)
            if not tickets:
                self._open.pop(client, None)
            self._changed.notify_all()


class RedisTurns:
    """Tickets shared through Redis, with leases this process renews while a ticket is open."""

    def __init__(self, url: str, lease_seconds: int = LEASE_SECONDS) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.lease_seconds = lease_seconds
        self._take = self.client.register_script(TAKE)
        self._turn = self.client.register_script(TURN)
        self._held: set[tuple[str, int]] = set()
        self._held_lock = threading.Lock()
        self._renewer_pid: int | None = None

    @staticmethod
    def _keys(client: str) -> tuple[str, str, str]:
        base = KEY_PREFIX + client
        return base + ":next", base + ":open", base + ":lease:"

    def take(self, client: str) -> int:
        counter, open_set, lease = self._keys(client)
        ticket = int(
            self._take(
                keys=[counter, open_set], args=[lease, self.lease_seconds, COUNTER_TTL_SECONDS]
            )
        )
        with self._held_lock:
            self._held.add((client, ticket))
        self._ensure_renewer()
        return ticket

    def wait_turn(self, client: str, ticket: int, timeout: float) -> bool:
        _, open_set, lease = self._keys(client)
        deadline = time.monotonic() + timeout
        pause = POLL_SECONDS[0]
        while not int(self._turn(keys=[open_set], args=[lease, ticket])):
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 1.5, POLL_SECONDS[1])
        return True

    def close(self, client: str, ticket: int) -> None:
        with self._held_lock:
            self._held.discard((client, ticket))
        _, open_set, lease = self._keys(client)
        pipe = self.client.pipeline()
        pipe.zrem(open_set, ticket)
        pipe.delete(f"{lease}{ticket}")
        pipe.execute()

    def _ensure_renewer(self) -> None:
        """One renewing thread per process (started lazily: gunicorn forks after loading)."""
        if self._renewer_pid == os.getpid():
            return
        self._renewer_pid = os.getpid()
        threading.Thread(target=self._renew_forever, name="tdb-order-leases", daemon=True).start()

    def _renew_forever(self) -> None:
        while True:
            time.sleep(RENEW_SECONDS)
            with self._held_lock:
                held = list(self._held)
            try:
                pipe = self.client.pipeline()
                for client, ticket in held:
                    pipe.set(
                        f"{self._keys(client)[2]}{ticket}", "1", ex=self.lease_seconds, xx=True
                    )
                pipe.execute()
            except Exception as error:
                log.warning("TDB answer order: cannot renew leases (%s)", error)


def make_turns(broker_url: str) -> Turns:
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisTurns(broker_url)
    return MemoryTurns()


def client_key(origin: str, address: str, authorization: str) -> str:
    """Who is asking: Origin, connection address and presented credentials, hashed."""
    return hashlib.sha256("\n".join((origin, address, authorization)).encode()).hexdigest()[:32]


def client_of() -> str:
    return client_key(
        request.headers.get("Origin", ""),
        request.remote_addr or "",
        request.headers.get("Authorization", ""),
    )


def take_ticket() -> None:
    """``before_request``: an inference request on the TDB routes takes its place in line."""
    if request.method != "POST" or request.path not in ORDERED_PATHS:
        return
    if "Origin" not in request.headers:  # not a page in a browser (a script, curl): no order
        return
    client = client_of()
    try:
        ticket = current_app.extensions["actq.tdb_turns"].take(client)
    except Exception as error:
        log.warning("TDB answer order unavailable (%s); answering unordered", error)
        return
    g.tdb_ticket = (client, ticket)


def wait_for_turn(response: Response) -> Response:
    """``after_request``: hold the answer until the client's earlier answers have left."""
    held = g.pop("tdb_ticket", None)
    if held is None:
        return response
    turns = current_app.extensions["actq.tdb_turns"]
    client, ticket = held
    timeout = current_app.config["ACTQ_SETTINGS"].tdb_wait_seconds + LEASE_SECONDS
    try:
        if not turns.wait_turn(client, ticket, timeout):
            log.warning("TDB answer order: gave up waiting for earlier answers of a client")
    except Exception as error:
        log.warning("TDB answer order unavailable (%s); answering unordered", error)
    response.call_on_close(lambda: _close_quietly(turns, client, ticket))
    return response


def close_unanswered(_error: BaseException | None = None) -> None:
    """``teardown_request``: a ticket whose request ended without an answer closes here."""
    held = g.pop("tdb_ticket", None)
    if held is not None:
        _close_quietly(current_app.extensions["actq.tdb_turns"], *held)


def _close_quietly(turns: Turns, client: str, ticket: int) -> None:
    try:
        turns.close(client, ticket)
    except Exception as error:  # the lease runs out instead
        log.warning("TDB answer order: cannot close a ticket (%s)", error)


def init_app(app: Flask) -> None:
    app.extensions["actq.tdb_turns"] = make_turns(app.config["ACTQ_SETTINGS"].broker())
    app.before_request(take_ticket)
    app.after_request(wait_for_turn)
    app.teardown_request(close_unanswered)
