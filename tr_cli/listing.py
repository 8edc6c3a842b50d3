"""`list`: the bundled workflows and the inputs each one lets you set."""
from __future__ import annotations

from . import workflows


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list bundled workflows and their settable inputs")
    p.add_argument("--brief", action="store_true", help="names only")
    p.set_defaults(func=main)


def main(args) -> int:
    found = workflows.bundled()
    if not found:
        print("no bundled workflows")
        return 0
    for name in found:
        print(name)
        if not args.brief:
            for line in workflows.describe(workflows.load(name)):
                print(line)
    return 0
