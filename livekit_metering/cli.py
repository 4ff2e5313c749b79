"""The ``livekit-metering`` command (typer, like livekit-agents' own CLI).

Each command only parses options and calls the library; the work lives in the modules it names.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="livekit-metering",
    help="Meter, price and report LiveKit Agents usage.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
