"""Request signatures: LiveKit access-token JWTs, checked with livekit-api's TokenVerifier.

Each API key belongs to one project; a verified token names its key (``iss``), and the key decides
the project every read and write is scoped to, so a key can neither write nor read another
project's data. Keys come from ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` (project ``default``) or
a TOML keys file::

    [keys.APIabc123]
    secret = "..."
    project = "acme"

Tokens are told apart by their ``sha256`` claim, as LiveKit signs webhooks:

* a **write** token carries the base64 SHA-256 of the one request body it signs (``POST
  /v1/records``); it is good for that body only, and never for a query;
* a **read** token carries no ``sha256`` (queries, the dashboard's sign-in).

Every token is short-lived: valid at most ``max_lifetime`` (10 minutes by default) from its ``nbf``
(or ``iat``), so a token that leaks is soon useless. Secrets are at least 32 characters.

The dashboard signs in once with a read token and gets an HttpOnly cookie holding a session token
of its own: signed with a key derived from the API secret (so it is never valid as a bearer token,
nor a bearer token as a session), for ``dashboard_session`` (8 hours by default).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from livekit import api

from .config import MIN_SECRET_LENGTH

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["AuthError", "BadKeys", "KeyRing", "KeysFileError", "Project", "Token", "body_digest"]

DEFAULT_LIFETIME = timedelta(minutes=10)
_SESSION_CONTEXT = b"livekit-metering dashboard session"


class AuthError(Exception):
    """The request is not signed by a known key (HTTP 401). The message says what to fix."""


class BadKeys(ValueError):
    """A key or secret cannot be used (too short, malformed); the message names it and the fix."""


class KeysFileError(BadKeys):
    """The keys file is malformed; the message names the entry and the fix."""


@dataclass(frozen=True)
class Project:
    name: str
    key: str


@dataclass(frozen=True)
class Token:
    """A verified token: whose it is, and the body hash it signs ("" for a read token)."""

    project: Project
    sha256: str

    def for_reading(self) -> Project:
        if self.sha256:
            raise AuthError(
                "this token signs one request body (a write token); sign queries with a token without a sha256 claim"
            )
        return self.project

    def for_writing(self) -> Token:
        if not self.sha256:
            raise AuthError("the token has no sha256 claim: sign the base64 SHA-256 of the request body")
        return self

    def check_body(self, body: bytes) -> Project:
        if not hmac.compare_digest(self.for_writing().sha256, body_digest(body)):
            raise AuthError("the body does not match the token's sha256 claim (sign the bytes exactly as sent)")
        return self.project


def body_digest(body: bytes) -> str:
    """The ``sha256`` claim for a body: base64 of its SHA-256, as LiveKit signs webhooks."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


class KeyRing:
    """API key -> (secret, project)."""

    def __init__(self, keys: Mapping[str, tuple[str, str]]) -> None:
        for key, (secret, _) in keys.items():
            if len(secret) < MIN_SECRET_LENGTH:
                raise BadKeys(
                    f"the secret of API key {key!r} has {len(secret)} characters; use at least {MIN_SECRET_LENGTH} "
                    "(LiveKit's generated secrets are longer: `livekit-server generate-keys`)"
                )
        self._keys = dict(keys)
        self._verifiers = {key: api.TokenVerifier(key, secret) for key, (secret, _) in self._keys.items()}
        self._sessions = {
            key: hmac.new(secret.encode(), _SESSION_CONTEXT, hashlib.sha256).digest()
            for key, (secret, _) in self._keys.items()
        }

    def __len__(self) -> int:
        return len(self._keys)

    def secrets(self) -> dict[str, str]:
        return {key: secret for key, (secret, _) in self._keys.items()}

    def project_of(self, key: str) -> str:
        return self._keys[key][1]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        env = os.environ if environ is None else environ
        key, secret = env.get("LIVEKIT_API_KEY", ""), env.get("LIVEKIT_API_SECRET", "")
        try:
            return cls({key: (secret, "default")} if key and secret else {})
        except BadKeys:
            raise BadKeys(
                f"LIVEKIT_API_SECRET has {len(secret)} characters; use at least {MIN_SECRET_LENGTH} "
                "(LiveKit's generated secrets are longer: `livekit-server generate-keys`)"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise KeysFileError(f"cannot read keys file {path}: {exc}") from None
        keys: dict[str, tuple[str, str]] = {}
        table = doc.get("keys")
        if not isinstance(table, dict) or not table:
            raise KeysFileError(f'{path}: expected [keys.<API key>] tables with secret = "..." and project = "..."')
        for key, entry in table.items():
            if not isinstance(entry, dict):
                raise KeysFileError(f"{path}: keys.{key} must be a table with secret and project")
            secret, project = entry.get("secret"), entry.get("project", "default")
            if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
                raise KeysFileError(
                    f"{path}: keys.{key}.secret must be a string of at least {MIN_SECRET_LENGTH} characters"
                )
            if not isinstance(project, str) or not project:
                raise KeysFileError(f"{path}: keys.{key}.project must be a non-empty string")
            keys[key] = (secret, project)
        return cls(keys)

    def merged(self, other: KeyRing) -> KeyRing:
        return KeyRing({**self._keys, **other._keys})

    def token(self, header: str | None, max_lifetime: timedelta = DEFAULT_LIFETIME) -> Token:
        """The verified token of an ``Authorization`` header: a known key, a good signature, not
        expired, and valid for at most ``max_lifetime``. Checks the headers only, never a body."""
        token = _token_from(header)
        try:
            unverified: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError(f"the Authorization token is not a valid JWT ({exc})") from None
        issuer = unverified.get("iss")
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None or not isinstance(issuer, str):
            raise AuthError(f"unknown API key {_short(issuer)}: sign with a key this collector knows")
        try:
            claims = verifier.verify(token)
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: sign each request with a fresh short-lived token") from None
        except Exception as exc:  # PyJWT and livekit-api raise several kinds; all mean "not signed by this key"
            raise AuthError(f"bad signature: {exc}") from None
        _check_lifetime(unverified, max_lifetime)
        return Token(Project(name=self._keys[issuer][1], key=issuer), claims.sha256 or "")

    # -- dashboard sessions ------------------------------------------------------------------------

    def session_cookie(self, project: Project, lifetime: timedelta) -> str:
        """A session token for the dashboard's cookie, signed with the key's derived session key."""
        now = int(time.time())
        claims = {"iss": project.key, "sub": "dashboard", "iat": now, "exp": now + int(lifetime.total_seconds())}
        return jwt.encode(claims, self._sessions[project.key], algorithm="HS256")

    def from_session(self, cookie: str) -> Project:
        try:
            issuer = jwt.decode(cookie, options={"verify_signature": False}).get("iss")
            key = self._sessions.get(issuer) if isinstance(issuer, str) else None
            if key is None or not isinstance(issuer, str):
                raise AuthError("the dashboard session belongs to a key this collector no longer knows; sign in again")
            claims = jwt.decode(cookie, key, algorithms=["HS256"], options={"require": ["exp", "iss", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("the dashboard session has expired: open a fresh dashboard link") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the dashboard session is not valid ({exc}): open a fresh dashboard link") from None
        if claims.get("sub") != "dashboard":
            raise AuthError("not a dashboard session: open a fresh dashboard link")
        return Project(name=self._keys[issuer][1], key=issuer)


def _check_lifetime(claims: Mapping[str, Any], max_lifetime: timedelta) -> None:
    exp = claims.get("exp")
    start = claims.get("nbf", claims.get("iat"))
    if not isinstance(start, (int, float)):
        start = time.time()
    if not isinstance(exp, (int, float)):
        raise AuthError("the token has no exp claim")
    lifetime, most = exp - start, max_lifetime.total_seconds()
    if lifetime > most:
        raise AuthError(
            f"the token is valid for {min(lifetime, 1e12):.0f} s; this collector accepts tokens valid for at most "
            f"{most:.0f} s from their nbf: sign each request with a short-lived token"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _token_from(header: str | None) -> str:
    if not header:
        raise AuthError("missing Authorization header: send a LiveKit access token signed with your API key")
    token = header.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise AuthError("empty Authorization token")
    return token
