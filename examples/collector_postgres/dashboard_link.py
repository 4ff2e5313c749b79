"""Print a dashboard link for the collector, signed with the project's key pair (valid for 12 hours).

    set -a; . /etc/livekit-metering/collector.env; set +a
    python dashboard_link.py https://metering.example.com

The dashboard passes the token from its URL to the query API; anyone holding the link can read
that project's figures until it expires, so share it like a password.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from urllib.parse import urlencode

from livekit.api import AccessToken


def dashboard_link(base_url: str, *, hours: float = 12, month: str | None = None) -> str:
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    if not key or not secret:
        raise SystemExit("set LIVEKIT_API_KEY and LIVEKIT_API_SECRET (the collector's key pair)")
    token = AccessToken(key, secret).with_ttl(timedelta(hours=hours)).to_jwt()
    query = {"token": token, **({"month": month} if month else {})}
    return f"{base_url.rstrip('/')}/dashboard/?{urlencode(query)}"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} https://metering.example.com [YYYY-MM]")
    print(dashboard_link(sys.argv[1], month=sys.argv[2] if len(sys.argv) > 2 else None))
