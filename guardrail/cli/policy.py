"""`guardrail policy validate | schema | show`: check policy files, print their JSON Schema, and print
the merged result of a policy (extends followed, environment substituted, defaults filled in).

FILE is a policy file or the name of a shipped policy (default, gated, strict, monitor, off).
Exit codes: 0 success; 2 an invalid policy (messages on stderr name the file, field and accepted values).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_policy_commands(subparsers: Any) -> None:
    """Register `policy validate|schema|show` on the `guardrail` parser's subparsers."""
    policy = subparsers.add_parser(
        "policy",
        help="validate policy files, print their schema or merged result",
        description=__doc__.split("\n\n")[0],
    )
    sub = policy.add_subparsers(required=True, metavar="ACTION")

    validate = sub.add_parser("validate", help="check policy files; exit 2 if any is invalid")
    validate.add_argument("files", nargs="+", metavar="FILE", help="policy file or shipped policy name")
    validate.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    validate.set_defaults(func=_validate)

    schema = sub.add_parser(
        "schema", help="print the JSON Schema of policy files (guardrail policy schema > policies/policy.schema.json)"
    )
    schema.set_defaults(func=_schema)

    show = sub.add_parser("show", help="print the merged policy (extends, ${ENV} and defaults applied)")
    show.add_argument("file", metavar="FILE", help="policy file or shipped policy name")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_show)


def _validate(args: argparse.Namespace) -> int:
    from guardrail.errors import PolicyError
    from guardrail.policy.schema import Policy

    failed = 0
    for ref in args.files:
        try:
            policy = Policy.load(ref)
        except PolicyError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            if args.json:
                print(json.dumps({"file": ref, "valid": False, "error": str(exc)}))
            continue
        if args.json:
            print(json.dumps({"file": ref, "valid": True, "name": policy.name, "sources": list(policy.sources)}))
        else:
            based = f" (extends {' -> '.join(reversed(policy.sources[:-1]))})" if len(policy.sources) > 1 else ""
            print(f"ok  {ref}: policy {policy.name!r}{based}")
    return 2 if failed else 0


def _schema(args: argparse.Namespace) -> int:
    from guardrail.policy.schema import schema_text

    sys.stdout.write(schema_text())
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from guardrail.policy.schema import Policy

    policy = Policy.load(args.file)
    data = policy.model_dump(mode="json")
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    print(f"# policy {policy.name!r} from {' + '.join(policy.sources)} (base first)")
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return 0
