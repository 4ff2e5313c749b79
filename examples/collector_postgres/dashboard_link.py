"""Print a dashboard link for the collector, signed with the project's key pair.

    set -a; . /etc/livekit-metering/collector.env; set +a
    python dashboard_link.py https://metering.example.com

The link's token is in its #fragment, which the browser never sends to a server or a log, and it is
valid for 5 minutes: opening the link exchanges it for an HttpOnly session cookie (8 hours, or the
collector's --dashboard-session-hours). Print a fresh link when it has expired.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from urllib.parse import urlencode

from livekit.api import AccessToken


def dashboard_link(base_url: str, *, minutes: float = 5, month: str | None = None) -> str:
    key, secret = os.environ.get("LIVEKIT_API_KEY", ""), os.environ.get("LIVEKIT_API_SECRET", "")
    if not key or not secret:
        raise SystemExit("set LIVEKIT_API_KEY and LIVEKIT_API_SECRET (the collector's key pair)")
    token = AccessToken(key, secret).with_ttl(timedelta(minutes=minutes)).to_jwt()
    query = f"?{urlencode({'month': month})}" if month else ""
    return f"{base_url.rstrip('/')}/dashboard/{query}#{urlencode({'token': token})}"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} https://metering.example.com [YYYY-MM]")
    print(dashboard_link(sys.argv[1], month=sys.argv[2] if len(sys.argv) > 2 else None))
