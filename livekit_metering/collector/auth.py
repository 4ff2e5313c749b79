"""Request signatures: LiveKit access-token JWTs, checked with livekit-api's TokenVerifier.

Each API key belongs to one project; a verified token names its key (``iss``), and the key decides
the project every read and write is scoped to, so a key can neither write nor read another
project's data. Keys come from ``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET`` (project ``default``) or
a TOML keys file::

    [keys.APIabc123]
    secret = "..."
    project = "acme"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from livekit import api

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["AuthError", "KeyRing", "Project", "body_digest"]


class AuthError(Exception):
    """The request is not signed by a known key (HTTP 401). The message says what to fix."""


class KeysFileError(ValueError):
    """The keys file is malformed; the message names the entry and the fix."""


@dataclass(frozen=True)
class Project:
    name: str
    key: str


def body_digest(body: bytes) -> str:
    """The ``sha256`` claim for a body: base64 of its SHA-256, as LiveKit signs webhooks."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


class KeyRing:
    """API key -> (secret, project)."""

    def __init__(self, keys: Mapping[str, tuple[str, str]]) -> None:
        self._keys = dict(keys)
        self._verifiers = {key: api.TokenVerifier(key, secret) for key, (secret, _) in self._keys.items()}

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
        return cls({key: (secret, "default")} if key and secret else {})

    @classmethod
    def load(cls, path: str | Path) -> KeyRing:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise KeysFileError(f"cannot read keys file {path}: {exc}") from None
        keys: dict[str, tuple[str, str]] = {}
        table = doc.get("keys")
        if not isinstance(table, dict) or not table:
            raise KeysFileError(f'{path}: expected [keys.<API key>] tables with secret = "..." and project = "..."')
        for key, entry in table.items():
            if not isinstance(entry, dict):
                raise KeysFileError(f"{path}: keys.{key} must be a table with secret and project")
            secret, project = entry.get("secret"), entry.get("project", "default")
            if not isinstance(secret, str) or len(secret) < 8:
                raise KeysFileError(f"{path}: keys.{key}.secret must be a string of at least 8 characters")
            if not isinstance(project, str) or not project:
                raise KeysFileError(f"{path}: keys.{key}.project must be a non-empty string")
            keys[key] = (secret, project)
        return cls(keys)

    def merged(self, other: KeyRing) -> KeyRing:
        return KeyRing({**self._keys, **other._keys})

    def verify(self, header: str | None, body: bytes | None = None) -> Project:
        """The project of a signed request; ``body`` given means the token must carry its sha256."""
        token = _token_from(header)
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as exc:
            raise AuthError(f"the Authorization token is not a valid JWT ({exc})") from None
        verifier = self._verifiers.get(issuer) if isinstance(issuer, str) else None
        if verifier is None or not isinstance(issuer, str):
            raise AuthError(f"unknown API key {issuer!r}: sign with a key this collector knows")
        try:
            claims = verifier.verify(token)
        except jwt.ExpiredSignatureError:
            raise AuthError("the token has expired: sign each request with a fresh short-lived token") from None
        except Exception as exc:  # PyJWT and livekit-api raise several kinds; all mean "not signed by this key"
            raise AuthError(f"bad signature: {exc}") from None
        if body is not None:
            if not claims.sha256:
                raise AuthError("the token has no sha256 claim: sign the base64 SHA-256 of the request body")
            if not hmac.compare_digest(claims.sha256, body_digest(body)):
                raise AuthError("the body does not match the token's sha256 claim (sign the bytes exactly as sent)")
        return Project(name=self._keys[issuer][1], key=issuer)


def _token_from(header: str | None) -> str:
    if not header:
        raise AuthError("missing Authorization header: send a LiveKit access token signed with your API key")
    token = header.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    if not token:
        raise AuthError("empty Authorization token")
    return token
