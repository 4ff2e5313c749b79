"""Phone number rental: the project's LiveKit numbers from the settings file or its SIP dispatch rules
(read with livekit-api from a LiveKit server; LiveKit Cloud's SIP API is the one part faked, at its
HTTP boundary), one number-month each per month; the settings file says what is wrong with it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import pytest
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from livekit import api
from livekit.protocol import sip

from livekit_metering.collector.phone_numbers import PhoneBook, dispatch_rule_numbers, rental_records
from livekit_metering.collector.settings import PhoneNumber, Settings, SettingsError, parse_settings
from livekit_metering.collector.store.base import open_store
from livekit_metering.rates import get_policy
from livekit_metering.records import Resource

KEY, SECRET = "APIsipkey", "sip-secret-sip-secret-sip-secret-sip"


def test_one_number_month_per_number_rented_in_the_month() -> None:
    numbers = (
        PhoneNumber("+14155550100", date(2026, 9, 1)),  # all along
        PhoneNumber("+18885550199", date(2026, 10, 20)),  # from the 20th: still the whole month's rent
        PhoneNumber("+14155550111", date(2026, 8, 1), until=date(2026, 10, 1)),  # returned before October
        PhoneNumber("+14155550122", date(2026, 11, 1)),  # not yet
    )
    october = rental_records(numbers, "2026-10", get_policy())
    got = {s.record.meta["number"]: (s.record.resource, s.record.quantity, s.record.start.day) for s in october}
    assert got == {
        "+14155550100": (Resource.PHONE_NUMBER, 1, 1),
        "+18885550199": (Resource.PHONE_NUMBER_TOLL_FREE, 1, 20),
    }
    assert rental_records(numbers, "2026-10", get_policy())[0].record == october[0].record  # the same id and payload
    assert october[0].record.id == "number:+14155550100/2026-10/phone_number"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"plan": "gold"}, "plan 'gold'"),
        ({"policy": "per-fortnight"}, "unknown rate policy 'per-fortnight'"),
        ({"colour": "blue"}, "unknown keys ['colour']"),
        ({"projects": {"acme": {"plan": "ship", "seats": 3}}}, "projects.acme may set plan, livekit_url and"),
        ({"livekit_url": "acme.livekit.cloud"}, "must be an https://"),
        ({"projects": {"acme": {"livekit_server": "mine"}}}, "livekit_server 'mine' (acme) is not one of"),
        ({"phone_numbers": [{"number": "12", "since": date(2026, 1, 1)}]}, "number must be a phone number"),
        ({"phone_numbers": [{"number": "+14155550100"}]}, "since (and until, if given) must be TOML dates"),
        (
            {"phone_numbers": [{"number": "+14155550100", "since": date(2026, 2, 1), "until": date(2026, 1, 1)}]},
            "until (2026-01-01) must be after since (2026-02-01)",
        ),
    ],
)
def test_a_bad_settings_file_says_what_to_fix(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(doc)
    assert message in str(info.value)


def test_plans_and_urls_per_project_over_the_defaults() -> None:
    settings = parse_settings({"plan": "scale", "projects": {"hobby": {"plan": "build"}, "acme": {}}})
    assert [settings.project(p).plan for p in ("hobby", "acme", "other")] == ["build", "scale", "scale"]
    moved = settings.with_overrides(plan="ship", livekit_url="https://x.livekit.cloud")
    assert [moved.project(p).plan for p in ("hobby", "acme")] == ["build", "ship"]
    assert moved.project("acme").livekit_url == "https://x.livekit.cloud"
    assert Settings().project("any").plan == "ship"


def rule(rule_id: str, numbers: list[str], created: int) -> sip.SIPDispatchRuleInfo:
    return sip.SIPDispatchRuleInfo(sip_dispatch_rule_id=rule_id, numbers=numbers, created_at=Timestamp(seconds=created))


@pytest.fixture
async def livekit() -> AsyncIterator[tuple[str, list[Any]]]:
    """LiveKit's SIP service at its HTTP boundary (Twirp, protobuf bodies), checking the API key's token."""
    rules = [
        rule("SDR_a", ["+14155550100"], 1_790_000_000),  # 2026-09-21
        rule("SDR_b", ["+1 888 555 0199", "+14155550100"], 1_792_000_000),  # 2026-10-14
    ]
    seen: list[Any] = []

    async def list_rules(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        grants = api.TokenVerifier(KEY, SECRET).verify(token)
        if not (grants.sip and grants.sip.admin):
            return web.json_response({"code": "permission_denied", "msg": "needs sip admin"}, status=403)
        seen.append(sip.ListSIPDispatchRuleRequest.FromString(await request.read()))
        body = sip.ListSIPDispatchRuleResponse(items=rules).SerializeToString()
        return web.Response(body=body, content_type="application/protobuf")

    app = web.Application()
    app.router.add_post("/twirp/livekit.SIP/ListSIPDispatchRule", list_rules)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_numbers_come_from_the_projects_dispatch_rules(livekit: tuple[str, list[Any]], tmp_path: Any) -> None:
    url, seen = livekit
    found = await dispatch_rule_numbers(url, KEY, SECRET)
    assert [(n.number, n.since, n.source) for n in found] == [
        ("+14155550100", date(2026, 9, 21), "dispatch rule SDR_a"),
        ("+18885550199", date(2026, 10, 14), "dispatch rule SDR_b"),
    ]
    assert seen[0].page.limit == 100

    settings = parse_settings(
        {
            "livekit_url": url,
            "phone_numbers": [{"project": "acme", "number": "+14155550100", "since": date(2026, 1, 5)}],
        }
    )
    book = PhoneBook(settings, lambda project: (KEY, SECRET))
    await book.refresh("acme")
    assert book.livekit_numbers("acme") == {"+14155550100", "+18885550199"}
    assert [n.source for n in book.numbers("acme")] == ["config", "dispatch rule SDR_b"]  # configured first
    async with open_store(f"sqlite:///{tmp_path}/m.db") as store:
        assert await book.write_rentals(store, "acme", "2026-10", get_policy()) == 2
        assert await book.write_rentals(store, "acme", "2026-10", get_policy()) == 0  # written once
        usage = await store.usage("acme", date(2026, 10, 1), date(2026, 11, 1), "resource")
        assert sorted((u.resource.value, u.quantity) for u in usage) == [
            ("phone_number", 1),
            ("phone_number_toll_free", 1),
        ]


async def test_a_livekit_api_outage_keeps_the_numbers_read_before(livekit: tuple[str, list[Any]]) -> None:
    url, _ = livekit
    book = PhoneBook(parse_settings({"livekit_url": url}), lambda project: (KEY, SECRET), refresh_every=0)
    await book.refresh("acme")
    assert len(book.numbers("acme")) == 2
    book.settings = parse_settings({"livekit_url": "http://127.0.0.1:9"})  # nothing listens there
    await book.refresh("acme")
    assert len(book.numbers("acme")) == 2


def test_serve_reads_the_settings_file_and_refuses_a_bad_one(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from livekit_metering.collector.serve import ServeError, build_config

    monkeypatch.setenv("LIVEKIT_API_KEY", KEY)
    monkeypatch.setenv("LIVEKIT_API_SECRET", SECRET)
    good = tmp_path / "collector.toml"
    good.write_text('plan = "scale"\n[[phone_numbers]]\nnumber = "+14155550100"\nsince = 2026-10-01\n')
    config = build_config(config=str(good), invoice_grace_hours=6, close_joins_after_hours=0)
    assert config.settings.project("default").plan == "scale"
    assert [n.number for n in config.settings.project("default").numbers] == ["+14155550100"]
    assert (config.invoice_grace.total_seconds() if config.invoice_grace else None, config.close_joins_after) == (
        21600.0,
        None,
    )
    assert build_config(config=str(good), plan="build").settings.project("default").plan == "build"
    bad = tmp_path / "bad.toml"
    bad.write_text('plan = "gold"\n')
    with pytest.raises(ServeError, match="plan 'gold'"):
        build_config(config=str(bad))
    with pytest.raises(ServeError, match="cannot read settings file"):
        build_config(config=str(tmp_path / "missing.toml"))
    with pytest.raises(ServeError, match="--invoice-grace-hours"):
        build_config(invoice_grace_hours=-1)
