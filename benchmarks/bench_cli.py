"""How long the `livekit-metering` command takes to start, and what the idle collector holds in memory.

    .venv/bin/python benchmarks/bench_cli.py [--rounds 15] [--baseline DIR]

Each command runs in a fresh process, ``--rounds`` times, interleaved with the references, and the
best wall time counts (start-up time is what is left when nothing else gets in the way). The
references, in the same run: a bare ``python -c pass``, and ``import livekit_metering`` with the
modules the reporting commands need (records, rate policies, price book). The collector: ``serve``
on SQLite, started, answering ``/healthz``, then left idle for 2 s; its RSS from /proc.

``--baseline DIR`` runs the same with another checkout of the package on PYTHONPATH, for the ratios.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CLI = [sys.executable, "-m", "livekit_metering.cli"]
REFERENCES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import livekit_metering (+ records, pricing)": [
        sys.executable,
        "-c",
        "import livekit_metering, livekit_metering.records, livekit_metering.rates, livekit_metering.pricing",
    ],
}
COMMANDS = {
    "livekit-metering prices": [*CLI, "prices"],
    "livekit-metering prices --kind stt": [*CLI, "prices", "--kind", "stt"],
    "livekit-metering invoice --help": [*CLI, "invoice", "--help"],
    "livekit-metering report --help": [*CLI, "report", "--help"],
    "livekit-metering --help": [*CLI, "--help"],
}


def timed(cmd: list[str], pythonpath: str | None) -> float:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    started = time.perf_counter()
    # From another directory: the current one would come first on sys.path and hide --baseline.
    quiet = subprocess.DEVNULL
    subprocess.run(cmd, stdout=quiet, stderr=quiet, env=env, check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def collector_rss(pythonpath: str | None) -> float:
    """MB resident in an idle `serve` process on SQLite."""
    env = dict(os.environ, LIVEKIT_API_KEY="APIbench", LIVEKIT_API_SECRET="bench-secret-" + "x" * 32)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*CLI, "serve", "--port", str(port), "--database", f"sqlite:///{Path(tmp) / 'c.db'}"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(2)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1]) / 1024
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--baseline", help="another checkout of the package, for ratios")
    options = parser.parse_args()
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    sides = {"this": None, **({"baseline": options.baseline} if options.baseline else {})}
    best: dict[tuple[str, str], float] = {}
    for _ in range(options.rounds):  # interleaved: every command sees the same machine
        for name, cmd in {**REFERENCES, **COMMANDS}.items():
            for side, pythonpath in sides.items():
                if name == "python -c pass" and side != "this":
                    continue
                key = (name, side)
                best[key] = min(best.get(key, 1e9), timed(cmd, pythonpath))
    bare = best[("python -c pass", "this")]
    package = best[("import livekit_metering (+ records, pricing)", "this")]
    print(f"{'':48s} {'this':>9s}" + ("  baseline" if options.baseline else ""))
    for name in {**REFERENCES, **COMMANDS}:
        line = f"{name:48s} {best[(name, 'this')] * 1000:7.0f} ms"
        if (name, "baseline") in best:
            line += f" {best[(name, 'baseline')] * 1000:7.0f} ms"
        if name in COMMANDS:
            this = best[(name, "this")]
            line += f"   x{this / package:.1f} the package import, x{this / bare:.1f} bare"
        print(line)
    for side, pythonpath in sides.items():
        print(f"collector idle RSS ({side}): {collector_rss(pythonpath):.0f} MB")


if __name__ == "__main__":
    main()
