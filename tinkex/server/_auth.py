"""API-key checks and the optional JWT exchange (protocol 2.5).

A key is never stored or logged: callers are known by a *principal*, a short SHA-256
fingerprint of their key, and everything they create is bound to it. JWTs from ``auth/token``
are HS256-signed with a secret that lives as long as the server process, carry ``iat``/``exp``
and the principal as ``sub``, and are accepted back as ``X-API-Key``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from typing import Callable, Dict, FrozenSet, Optional

from ._problems import Problem
from ._settings import ServerSettings

__all__ = ["Authenticator", "fingerprint", "KEY_PREFIX"]

KEY_PREFIX = "tml-"
_JWT_PREFIX = "eyJ"
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode("ascii")
_CACHE_LIMIT = 4096
INVALID_TOKEN = 'Bearer error="invalid_token"'


def fingerprint(key: str) -> str:
    """The principal of ``key``: not reversible, stable for the key."""
    return "key-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _unauthorized(detail: str, *, invalid_token: bool = False) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": INVALID_TOKEN} if invalid_token else None)


class Authenticator:
    """Maps ``X-API-Key`` values to principals. Safe to share between threads (the cache is a dict
    of immutable values, replaced wholesale when full).

    Args:
        settings: ``api_keys`` restricts the keys; empty means any ``tml-`` key.
        clock: wall-clock seconds, for JWT ``iat``/``exp``.

    Example:
        >>> auth = Authenticator(ServerSettings())
        >>> auth.principal("tml-abc") == fingerprint("tml-abc")
        True
    """

    def __init__(self, settings: ServerSettings, clock: Callable[[], float] = time.time) -> None:
        self._allowed: Optional[FrozenSet[str]] = (
            frozenset(fingerprint(key) for key in settings.api_keys) if settings.api_keys else None
        )
        self._ttl = settings.jwt_ttl_s
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._cache: Dict[str, str] = {}

    def principal(self, key: Optional[str]) -> str:
        """The principal for a header value.

        Raises:
            Problem: 401 for a missing, refused, malformed or expired credential.
        """
        if not key:
            raise _unauthorized("missing X-API-Key header")
        found = self._cache.get(key)
        if found is not None:
            return found
        if key.startswith(_JWT_PREFIX):
            return self._verify_jwt(key)
        principal = self._check_key(key)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {}
        self._cache[key] = principal
        return principal

    def _check_key(self, key: str) -> str:
        principal = fingerprint(key)
        if self._allowed is not None:
            if principal not in self._allowed:
                raise _unauthorized("invalid API key")
        elif not key.startswith(KEY_PREFIX):
            raise _unauthorized(f"invalid API key: keys must start with {KEY_PREFIX!r}")
        return principal

    def issue_jwt(self, principal: str) -> str:
        """A JWT for ``principal`` valid for ``jwt_ttl_s`` seconds."""
        now = int(self._clock())
        claims = {"sub": principal, "iat": now, "exp": now + int(self._ttl), "jti": secrets.token_hex(8)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode("ascii"))
        return f"{_HEADER}.{payload}.{self._sign(_HEADER, payload)}"

    def _sign(self, header: str, payload: str) -> str:
        digest = hmac.new(self._secret, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()
        return _b64(digest)

    def _verify_jwt(self, token: str) -> str:
        parts = token.split(".")
        if len(parts) != 3:
            raise _unauthorized("malformed JWT", invalid_token=True)
        header, payload, signature = parts
        try:
            expected = self._sign(header, payload)
        except UnicodeEncodeError:
            raise _unauthorized("malformed JWT", invalid_token=True) from None
        if not hmac.compare_digest(expected, signature):
            raise _unauthorized("JWT not issued by this server", invalid_token=True)
        try:
            claims = json.loads(_unb64(payload))
            principal, expires = str(claims["sub"]), float(claims["exp"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise _unauthorized("malformed JWT", invalid_token=True) from None
        if expires <= self._clock():
            raise _unauthorized("JWT expired", invalid_token=True)
        return principal
