"""Who may talk to the collector, decided from the headers: a known key, a short-lived token, write
tokens only for the body they sign and read tokens only for queries, long secrets; the body is read
only after that, within a time limit; the dashboard signs in with a short-lived token exchanged for
an HttpOnly cookie, and every response carries the security headers."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
from collector_helpers import body_of, get, post, rec

from livekit_metering.collector.auth import body_digest
from livekit_metering.collector.config import Limits
from livekit_metering.collector.testing import TEST_KEY, TEST_SECRET, run_collector, sign


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[str]:
    async with run_collector(tmp_path / "auth.db") as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def token(*, lifetime: float, nbf: float | None = None, secret: str = TEST_SECRET, **claims: object) -> str:
    """A LiveKit-style token, hand-made so its times can be anything."""
    start = time.time() if nbf is None else nbf
    return jwt.encode({"iss": TEST_KEY, "nbf": int(start), "exp": int(start + lifetime), **claims}, secret)


async def raw_exchange(url: str, head: str, body: bytes = b"", *, close: bool = False, timeout: float = 10) -> str:
    """Send a request's head (and part of a body) on a plain connection; the status line that comes back."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        if close:
            return ""
        return (await asyncio.wait_for(reader.readline(), timeout)).decode().strip()
    finally:
        writer.close()


def post_head(auth: str, length: int) -> str:
    return (
        "POST /v1/records HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth}\r\nContent-Length: {length}"
    )


# -- lifetime ---------------------------------------------------------------------------------------


async def test_a_token_valid_longer_than_ten_minutes_is_refused(collector: str, http: aiohttp.ClientSession) -> None:
    year_2100 = 4_102_444_800 - time.time()
    for auth, expected in (
        (token(lifetime=year_2100), 401),  # accepted on today's main
        (token(lifetime=11 * 60), 401),
        (token(lifetime=10 * 60), 200),
        (token(lifetime=9 * 60, nbf=time.time() - 60), 200),
    ):
        async with http.get(f"{collector}/v1/sessions", headers={"Authorization": auth}) as resp:
            assert resp.status == expected, await resp.text()
            if expected == 401:
                assert "at most 600 s" in (await resp.json())["error"]
    body = body_of([rec()])
    status, doc = await post(http, collector, body, auth=token(lifetime=year_2100, sha256=body_digest(body)))
    assert status == 401 and "at most 600 s" in doc["error"]


async def test_the_maximum_lifetime_is_configurable(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_collector(tmp_path / "a.db", limits=Limits(max_token_lifetime=timedelta(hours=1))) as url:
        for lifetime, expected in ((59 * 60, 200), (61 * 60, 401)):
            async with http.get(f"{url}/v1/sessions", headers={"Authorization": token(lifetime=lifetime)}) as resp:
                assert resp.status == expected


# -- write and read tokens ---------------------------------------------------------------------------


async def test_a_write_token_does_not_read_and_a_read_token_does_not_write(
    collector: str, http: aiohttp.ClientSession
) -> None:
    body = body_of([rec()])
    status, _ = await post(http, collector, body)
    assert status == 200
    # The token that signed that body (it carries its sha256): not a read token.
    status, doc = await get(http, collector, "/v1/sessions", auth=sign(body))
    assert status == 401 and "write token" in doc["error"]
    status, doc = await post(http, collector, body, auth=sign())
    assert status == 401 and "sha256" in doc["error"]


# -- secrets -------------------------------------------------------------------------------------------


def test_short_secrets_are_refused_from_the_environment_the_keys_file_and_code(tmp_path: Path) -> None:
    from livekit_metering.collector.auth import BadKeys, KeyRing, KeysFileError
    from livekit_metering.collector.serve import ServeError, build_config

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_API_")}
    with mock.patch.dict(os.environ, {**env, "LIVEKIT_API_KEY": "APIk", "LIVEKIT_API_SECRET": "abc"}, clear=True):
        with pytest.raises(ServeError, match="LIVEKIT_API_SECRET has 3 characters; use at least 32"):
            build_config()
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys.APIk]\nsecret = "12345678"\nproject = "p"\n')
    with pytest.raises(KeysFileError, match="at least 32 characters"):
        KeyRing.load(keys)
    with pytest.raises(BadKeys, match="has 31 characters"):
        KeyRing({"APIk": ("x" * 31, "p")})
    assert len(KeyRing({"APIk": ("x" * 32, "p")})) == 1


# -- the headers first, then the body, in bounded time ---------------------------------------------


async def test_the_headers_are_checked_before_a_byte_of_the_body_is_read(collector: str) -> None:
    # Nothing of the announced 8 MB is sent: the answer must come from the headers alone.
    assert "401" in await raw_exchange(collector, post_head("Bearer not-a-jwt", 8 * 1024 * 1024))
    forged = token(lifetime=60, secret="y" * 40, sha256="x")
    assert "401" in await raw_exchange(collector, post_head(forged, 8 * 1024 * 1024))
    signed = sign(b"whatever")
    assert "413" in await raw_exchange(collector, post_head(signed, 9 * 1024 * 1024))


async def test_a_body_that_does_not_arrive_in_time_gets_408(tmp_path: Path) -> None:
    async with run_collector(tmp_path / "t.db", limits=Limits(body_timeout=timedelta(seconds=1))) as url:
        body = body_of([rec()])
        status = await raw_exchange(url, post_head(sign(body), len(body)), body[: len(body) // 2])
        assert "408" in status


async def test_a_client_that_goes_away_mid_body_is_logged_at_info(
    collector: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livekit_metering.collector")
    body = body_of([rec("GONE", f"llm-{i}") for i in range(200)])
    await raw_exchange(collector, post_head(sign(body), len(body)), body[:1000], close=True)
    for _ in range(100):
        if "client went away" in caplog.text:
            break
        await asyncio.sleep(0.05)
    assert "client went away" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# -- the dashboard's sign-in -----------------------------------------------------------------------


async def test_the_dashboard_signs_in_with_a_short_token_for_an_httponly_cookie(collector: str) -> None:
    # unsafe=True: a browser keeps cookies of an IP address (aiohttp's jar does not by default).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(f"{collector}/dashboard/session", headers={"Authorization": sign()}) as resp:
            assert resp.status == 200, await resp.text()
            cookie = resp.cookies["livekit_metering_session"]
        assert (cookie["httponly"], cookie["samesite"], cookie["path"]) == (True, "Strict", "/")
        assert int(cookie["max-age"]) == 8 * 3600
        # The cookie alone now reads the project's data; nothing travels in a URL.
        async with browser.get(f"{collector}/v1/usage") as resp:
            assert resp.status == 200
        session = cookie.value

    async with aiohttp.ClientSession() as http:
        # A token in the URL is no longer accepted (it ends up in logs and Referer headers).
        async with http.get(f"{collector}/v1/usage", params={"token": sign()}) as resp:
            assert resp.status == 401
        # The session is not a bearer token, and a cookie signed with the API secret is not a session.
        status, _ = await get(http, collector, "/v1/usage", auth=session)
        assert status == 401
        forged = jwt.encode({"iss": TEST_KEY, "sub": "dashboard", "exp": int(time.time()) + 60}, TEST_SECRET)
        async with http.get(f"{collector}/v1/usage", headers={"Cookie": f"livekit_metering_session={forged}"}) as resp:
            assert resp.status == 401
        # Signing in needs a short-lived read token.
        for auth in (sign(b"a body"), token(lifetime=3600)):
            async with http.post(f"{collector}/dashboard/session", headers={"Authorization": auth}) as resp:
                assert resp.status == 401


async def test_a_dashboard_session_expires(tmp_path: Path) -> None:
    async with run_collector(tmp_path / "s.db", limits=Limits(dashboard_session=timedelta(seconds=1))) as url:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/dashboard/session", headers={"Authorization": sign()}) as resp:
                session = resp.cookies["livekit_metering_session"].value
            await asyncio.sleep(2.1)
            async with http.get(f"{url}/v1/usage", headers={"Cookie": f"livekit_metering_session={session}"}) as resp:
                assert resp.status == 401 and "expired" in (await resp.json())["error"]


async def test_every_response_carries_the_security_headers(collector: str, http: aiohttp.ClientSession) -> None:
    for path in ("/dashboard/", "/dashboard/app.js", "/dashboard/nothing-here", "/healthz", "/v1/usage"):
        async with http.get(f"{collector}{path}") as resp:
            headers = resp.headers
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp
        assert headers.get("X-Frame-Options") == "DENY", path
        assert headers.get("Referrer-Policy") == "no-referrer", path
