"""Flags that several `guardrail` subcommands share, spelled the same everywhere: where the model loads
(`--dtype`, `--device`, `--device-map`), hidden aliases that keep old spellings working, and the policy a
command runs under."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from guardrail.errors import RequestError
from guardrail.models.placement import DEVICE_MAP_STRATEGIES, DTYPES, DeviceMap, Placement

if TYPE_CHECKING:
    from torch import nn

    from guardrail.policy.schema import Policy


def add_placement(parser: argparse.ArgumentParser, *, from_policy: bool) -> None:
    """`--dtype`, `--device`, `--device-map`; left out, they come from the policy's `runtime:` section
    (`from_policy`) or transformers' defaults."""
    fallback = "the policy's runtime.{}, else " if from_policy else ""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=f"weights' precision (default: {fallback.format('dtype')}auto: the checkpoint's own)",
    )
    parser.add_argument(
        "--device",
        help="one device for the whole model: cuda, cuda:1, cpu, mps, or auto (a GPU when torch sees one) "
        f"(default: {fallback.format('device')}the CPU)",
    )
    parser.add_argument(
        "--device-map",
        type=device_map_argument,
        help=f"spread the model over devices with accelerate: {', '.join(DEVICE_MAP_STRATEGIES)}, or JSON "
        '{"module": device} (needs pip install accelerate; exclusive with --device'
        + (f"; default: {fallback.format('device_map')}none)" if from_policy else ")"),
    )


def device_map_argument(text: str) -> DeviceMap:
    """`--device-map`: a strategy name, or a JSON object of module names to devices."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not a JSON object ({exc.msg})") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, str)) for v in value.values()):
        raise argparse.ArgumentTypeError("expected a JSON object of module names to a GPU index or a device name")
    return value


def add_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """An old spelling of a flag, hidden from --help, that sets the same `dest` as the documented one."""
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def load_policy(ref: str | None) -> Policy:
    """The policy a command runs under: a file or a shipped name; None = the shipped `default`."""
    from guardrail.policy.schema import Policy

    return Policy.load(ref or "default")


def placement(args: argparse.Namespace, policy: Policy | None = None) -> Placement:
    """`load_model`'s placement from the command line, the rest from the policy's runtime section."""
    from guardrail.policy.sections import RuntimePolicy

    runtime = policy.runtime if policy is not None else RuntimePolicy()
    return runtime.placement(dtype=args.dtype, device=args.device, device_map=args.device_map)


def place_loaded(model: nn.Module, args: argparse.Namespace, what: str) -> nn.Module:
    """A model the command did not load from disk (a testbed, a tiny model) moved and cast as the flags say;
    `--device-map` applies only to a model loaded with --model."""
    from guardrail.models.loading import place_model

    if args.device_map is not None:
        raise RequestError(f"--device-map applies to a model loaded with --model, not to {what}; use --device")
    return place_model(model, dtype=args.dtype or "auto", device=args.device)
