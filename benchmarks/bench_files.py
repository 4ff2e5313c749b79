"""`invoice` and `report` over large records files: wall time, CPU time and peak memory.

    .venv/bin/python benchmarks/bench_files.py [--records 200000 2000000] [--rounds 2] [--baseline DIR]

Writes a JSON-lines file of N records (sessions of 10 records each: a running checkpoint, then agent
time, STT, two LLM calls with cached input and TTS, as an agent writes them; 40 session shapes, the
days spread over a month), then runs each command in a fresh process, as a user would, and reports
the best of ``--rounds`` (wall, CPU) and the peak RSS of that process (``ru_maxrss``).

``--baseline DIR`` runs the same commands with another checkout of the package on PYTHONPATH (for
example ``git archive main | tar -x -C /tmp/base``), in the same run, and prints the ratios. The
baseline is skipped above 500,000 records: it reads the whole file into memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

COMMANDS = {
    "invoice": ["invoice", "{file}", "--month", "2026-11", "--format", "json"],
    "report (sessions)": ["report", "{file}", "--output", "{out}"],
    "report --group-by day": ["report", "{file}", "--group-by", "day", "--output", "{out}"],
    "report --group-by room": ["report", "{file}", "--group-by", "room", "--format", "csv", "--output", "{out}"],
}
BASELINE_MAX_RECORDS = 500_000


def write_records(path: Path, count: int) -> int:
    """``count`` records (rounded up to whole sessions) by text substitution in 40 real sessions."""
    from usage_samples import session_records

    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    shapes = []
    for k in range(40):
        records = session_records(
            "AJ_SHAPE00000",
            start,
            30 + k * 17,
            room="call-SHAPE00000",
            agent=("support", "sales")[k % 2],
            customer=f"customer-{k % 20}",
            checkpoint=True,
        )
        shapes.append([r.canonical() for r in records])
    written = 0
    with path.open("w") as out:
        n = 0
        while written < count:
            day = f"2026-11-{1 + n * 28 // max(1, count // 10):02d}"
            for line in shapes[n % 40]:
                out.write(line.replace("SHAPE00000", f"{n:010d}").replace("2026-11-01", day) + "\n")
            written += len(shapes[n % 40])
            n += 1
    return written


def run(args: list[str], pythonpath: str | None) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MB) of one run of the command in a fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "livekit_metering.cli", *args]
    started = time.perf_counter()
    # From another directory: the current one would come first on sys.path and hide --baseline.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tempfile.gettempdir())
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err.decode()[-1000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, nargs="+", default=[200_000, 2_000_000])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", help="another checkout of the package, run in the same way for ratios")
    options = parser.parse_args()
    print(f"Python {platform.python_version()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        for count in options.records:
            path = Path(tmp) / "records.jsonl"
            written = write_records(path, count)
            size = path.stat().st_size / 1e6
            print(f"\n{written:,} records, {size:.0f} MB")
            for name, template in COMMANDS.items():
                args = [a.replace("{file}", str(path)).replace("{out}", str(Path(tmp) / "out.txt")) for a in template]
                sides = {"this": None}
                if options.baseline and written <= BASELINE_MAX_RECORDS:
                    sides["baseline"] = options.baseline
                best: dict[str, tuple[float, float, float]] = {}
                for _ in range(options.rounds):  # interleaved, so both sides see the same machine
                    for side, pythonpath in sides.items():
                        wall, cpu, rss = run(args, pythonpath)
                        old = best.get(side, (1e9, 1e9, 0.0))
                        best[side] = (min(old[0], wall), min(old[1], cpu), max(old[2], rss))
                line = f"  {name:24s}"
                for side, (wall, cpu, rss) in best.items():
                    line += f"  {side}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, {rss:5.0f} MB"
                if "baseline" in best:
                    (old_wall, old_cpu, _), (wall, cpu, _) = best["baseline"], best["this"]
                    line += f"  (x{old_wall / wall:.2f} faster, CPU x{old_cpu / cpu:.2f})"
                print(line, flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
