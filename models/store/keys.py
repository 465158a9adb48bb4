"""API keys: made once, shown once, stored only as a hash.

A key is ``actq_`` followed by 43 URL-safe characters (32 random bytes); the ``api_keys`` table
keeps its sha256 (hex), which is enough to recognise it and useless for using it. The key's
``name`` becomes the ``owner`` of every job submitted with it, so a replacement key made under the
same name (after revoking the old one) keeps that history. With no active key at all the service
is open (loopback only, ``api.auth``). Functions take a ``session``; callers commit.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.errors import RequestValidationError
from models.store.tables import ApiKey, utcnow

TOKEN_PREFIX = "actq_"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_key(
    session: Session, name: str, admin: bool = False, rate_per_minute: float | None = None
) -> tuple[ApiKey, str]:
    """Add a key; returns the row and the key itself (the only time it exists in clear)."""
    if not NAME_PATTERN.fullmatch(name):
        raise RequestValidationError(
            "a key name has 1 to 100 characters: letters, digits and _ . @ -", "name"
        )
    if active_key_named(session, name) is not None:
        raise RequestValidationError(
            f"an active key named {name!r} exists; revoke it first", "name"
        )
    if rate_per_minute is not None and rate_per_minute < 0:
        raise RequestValidationError("the rate must be >= 0 requests per minute", "ratePerMinute")
    token = new_token()
    key = ApiKey(
        id=secrets.token_hex(8),
        name=name,
        token_hash=hash_token(token),
        admin=admin,
        rate_per_minute=rate_per_minute,
        created_at=utcnow(),
    )
    session.add(key)
    return key, token


def active_key_named(session: Session, name: str) -> ApiKey | None:
    query = select(ApiKey).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
    return session.scalars(query).first()


def find_key(session: Session, token: str) -> ApiKey | None:
    """The active key whose hash matches ``token``, or None."""
    query = select(ApiKey).where(
        ApiKey.token_hash == hash_token(token), ApiKey.revoked_at.is_(None)
    )
    return session.scalars(query).first()


def any_active_key(session: Session) -> bool:
    query = select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)
    return session.execute(query).first() is not None


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, name_or_id: str) -> list[ApiKey]:
    """Revoke the active key with this id, or every active key with this name; returns them."""
    query = select(ApiKey).where(
        ApiKey.revoked_at.is_(None), (ApiKey.id == name_or_id) | (ApiKey.name == name_or_id)
    )
    keys = list(session.scalars(query))
    now = utcnow()
    for key in keys:
        key.revoked_at = now
    return keys
