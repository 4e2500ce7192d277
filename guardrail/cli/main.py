"""`guardrail` command line: demo, calibrate, run, inspect, eval, bench, policy, families, testbeds.

Exit codes: 0 success; 2 bad usage or invalid input (policy, audio, artifact, a device this machine lacks);
1 other errors (one line on stderr; `--debug` prints the traceback); 141 when stdout's reader went away.
With `--json`, a failure prints `{"error": {"type": ..., "message": ...}}` (`guardrail.cli.exits`).

Flags mean the same in every subcommand: `--model`, `--policy`, `--artifact`, `--probe` (a probe
directory), `--max-new-tokens`, `--out`, `--json`, and `--dtype`, `--device`, `--device-map` where a model
loads (`guardrail.cli.options`). Old spellings (`bench --new-tokens`, `calibrate --probe` for
`--train-probe`) still work, hidden from --help.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from guardrail.cli.exits import run_command
from guardrail.version import __version__


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


class Parser(argparse.ArgumentParser):
    """Every (sub)command takes `--debug`; sub-parsers are made of the parent's class, so nested ones too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: a sub-command's default must not overwrite `guardrail --debug COMMAND`
        self.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="print the traceback of an error"
        )


def build_parser() -> argparse.ArgumentParser:
    from guardrail.cli.commands import add_model_commands
    from guardrail.cli.interop import add_interop_commands
    from guardrail.cli.policy import add_policy_commands
    from guardrail.cli.research import add_research_commands
    from guardrail.cli.serve import add_serve_command
    from guardrail.cli.testbeds import add_testbeds_commands

    parser = Parser(prog="guardrail", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    add_model_commands(sub)
    add_research_commands(sub)
    add_policy_commands(sub)
    add_testbeds_commands(sub)
    add_serve_command(sub)
    add_interop_commands(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
