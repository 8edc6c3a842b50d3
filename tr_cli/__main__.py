"""python -m tr_cli {run,list,...}: the headless runner. Exit codes: 0 ok, 2 bad input or usage,
3 server unreachable, 4 the workflow failed, 128 + n stopped by signal n (130 SIGINT, 143 SIGTERM, 129 SIGHUP)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .client import Interrupted, RunnerError, install_signal_handlers

SUBCOMMANDS = ["run", "listing", "stream"]  # modules in tr_cli exposing add_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tr_cli", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__package__}.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_signal_handlers()
    try:
        return args.func(args) or 0
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Interrupted) else int(signal.SIGINT)
        print(f"error: interrupted by {signal.Signals(signum).name}: the prompt was stopped, this run's files were "
              f"removed from the server, no output written", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
