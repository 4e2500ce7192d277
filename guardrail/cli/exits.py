"""How a `guardrail` command ends: its exit code, and one line on stderr (plus a JSON error object on stdout
with `--json`) when it fails. 0 success; 2 bad usage or invalid input; 1 other errors; 141 when the reader
of stdout went away (`guardrail ... --json | head`), as for any Unix tool stopped by SIGPIPE."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from guardrail.errors import GuardrailError

BROKEN_PIPE = 141  # 128 + SIGPIPE


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; turn its failure into an exit code and a message, never a raw traceback."""
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here rather than at interpreter exit
        return code
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except GuardrailError as exc:  # bad input: the message says what to do
        return _fail(exc, args, 2, str(exc))
    except Exception as exc:  # a bug or an environment failure: one line, the traceback with --debug
        first = " ".join(str(exc).split("\n", 1)[0].split())[:500]
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        return _fail(exc, args, 1, f"{what} (rerun with --debug for the traceback)")


def _fail(exc: Exception, args: argparse.Namespace, code: int, message: str) -> int:
    """Report `exc`: `error: message` on stderr (and the traceback with --debug), and with --json a JSON
    object `{"error": {"type", "message"}}` on stdout, so a script reading stdout always gets JSON."""
    if getattr(args, "debug", False):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
    return code
