"""Per-key rate limits: a token bucket per API key, answered 429 with ``Retry-After``.

Each key may make ``rate_burst`` requests at once and ``rate_per_minute`` requests a minute over
time (a key's own ``rate_per_minute`` overrides the service's; 0 switches the limit off). An open
service (no keys, local clients only) has no limit. With a Redis broker the buckets live in Redis
(one small hash per key, updated by a Lua script with Redis's clock), so every gunicorn worker and
every API machine shares them; otherwise (the embedded mode, one process) they live in memory.
If Redis cannot be reached the request is let through: a rate limit is not worth an outage.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

KEY_PREFIX = "actq:rate:"

# KEYS[1]: the bucket; ARGV: tokens per second, burst. Returns {allowed, seconds to wait}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class Buckets(Protocol):
    def take(self, key: str, per_second: float, burst: int) -> float:
        """Take one token; 0 if allowed, else the seconds until one is available."""


class MemoryBuckets:
    """Buckets of one process."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_second: float, burst: int) -> float:
        now = time.monotonic()
        with self._lock:
            tokens, at = self._state.get(key, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * per_second)
            if tokens >= 1:
                self._state[key] = (tokens - 1, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1 - tokens) / per_second


class RedisBuckets:
    """Buckets shared through Redis; lets requests through while Redis is unreachable."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.script = self.client.register_script(TOKEN_BUCKET)

    def take(self, key: str, per_second: float, burst: int) -> float:
        try:
            allowed, wait = self.script(keys=[KEY_PREFIX + key], args=[per_second, burst])
        except Exception as error:
            log.warning("Rate limits unavailable (Redis: %s); letting the request through", error)
            return 0.0
        return 0.0 if int(allowed) else float(wait)


def make_buckets(broker_url: str) -> Buckets:
    if broker_url.startswith(("redis://", "rediss://")):
        return RedisBuckets(broker_url)
    return MemoryBuckets()


def retry_after(seconds: float) -> int:
    """Whole seconds for the ``Retry-After`` header, at least 1."""
    return max(1, math.ceil(seconds))
