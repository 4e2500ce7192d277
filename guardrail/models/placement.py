"""Where and in what precision a model loads: the dtype names, the device and device-map rules, and the
checks that turn a placement this machine cannot honour (a GPU torch does not see, `device_map` without
accelerate, `device` and `device_map` together) into a `DeviceError` before any weight is read.

`device` puts the whole model on one device ("cpu", "cuda", "cuda:1", "mps", or "auto": the first GPU
when torch sees one, else the CPU). `device_map` lets accelerate spread the layers over devices ("auto",
"balanced", "balanced_low_0", "sequential", or a mapping of module names to devices).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict, get_args

from guardrail.errors import DeviceError

if TYPE_CHECKING:
    import torch

DtypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DtypeName)
DeviceMapStrategy = Literal["auto", "balanced", "balanced_low_0", "sequential"]
DEVICE_MAP_STRATEGIES: tuple[str, ...] = get_args(DeviceMapStrategy)
DeviceMap: TypeAlias = str | Mapping[str, int | str]
AUTO = "auto"
ACCELERATE_HINT = "pip install accelerate"


class Placement(TypedDict):
    """The placement arguments of `load_model`."""

    dtype: str
    device: str | None
    device_map: DeviceMap | None


def check_device_name(device: str) -> str:
    """`device` when it names a device torch knows ("cuda", "cuda:1", "cpu", "mps", ...) or is "auto";
    a ValueError otherwise. Says nothing about whether this machine has that device."""
    import torch

    if device == AUTO:
        return device
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError("not a device torch knows; e.g. 'cuda', 'cuda:1', 'cpu', 'mps' or 'auto'") from None
    return device


def torch_dtype(name: str) -> torch.dtype | str:
    """The torch dtype of a dtype name ("auto" stays "auto": the checkpoint's own)."""
    import torch

    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return name if name == AUTO else getattr(torch, name)


def resolve_device(device: str | None) -> str | None:
    """The device to move a loaded model to: "auto" becomes the first GPU torch sees (else "mps", else
    "cpu"); a device this machine lacks is a `DeviceError` naming it."""
    import torch

    if device is None:
        return None
    if device == AUTO:
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        check_device_name(device)
    except ValueError as exc:
        raise DeviceError(f"device {device!r}: {exc}") from None
    check_available(torch.device(device), device)
    return device


def check_available(target: torch.device, asked: str) -> None:
    """A `DeviceError` naming `asked` unless torch sees the device `target` on this machine."""
    import torch

    if target.type in ("cpu", "meta", "disk"):
        return
    backend = torch.backends.mps if target.type == "mps" else getattr(torch, target.type, None)
    available = getattr(backend, "is_available", None)
    if available is not None and not available():
        build = f"torch {torch.__version__}" + (" (a CPU-only build)" if torch.version.cuda is None else "")
        raise DeviceError(
            f"device {asked!r} was requested, but {build} sees no {target.type.upper()} device on this machine; "
            "use device 'cpu' (or 'auto': a GPU when there is one), or install a torch build for that device"
        )
    count = getattr(backend, "device_count", None)
    if target.index is not None and count is not None and target.index >= count():
        raise DeviceError(
            f"device {asked!r} was requested, but torch sees {count()} {target.type} device(s) "
            f"(indices 0 to {count() - 1})"
        )


def device_map_arguments(device: str | None, device_map: DeviceMap | None) -> dict[str, Any]:
    """`from_pretrained`'s device_map argument, checked: exclusive with `device`, accelerate installed,
    the GPUs it names present."""
    if device_map is None:
        return {}
    if device is not None:
        raise DeviceError(
            f"device {device!r} and device_map {device_map!r} were both given: device puts the whole model on "
            "one device, device_map spreads its layers over devices (accelerate); give one of them"
        )
    try:
        importlib.import_module("accelerate")
    except ImportError:
        raise DeviceError(f"device_map {device_map!r} needs the accelerate package: {ACCELERATE_HINT}") from None
    targets = device_map.values() if isinstance(device_map, Mapping) else [device_map]
    for target in targets:
        _check_map_target(target)
    return {"device_map": dict(device_map) if isinstance(device_map, Mapping) else device_map}


def _check_map_target(target: int | str) -> None:
    """A device named in a device map (a GPU index, "cpu", "disk", "cuda:1"; a strategy name) is present."""
    import torch

    if isinstance(target, int):
        check_available(torch.device("cuda", target), f"cuda:{target}")
    elif target not in DEVICE_MAP_STRATEGIES and target != "disk":
        try:
            parsed = torch.device(target)
        except (RuntimeError, TypeError):
            raise DeviceError(
                f"device_map names {target!r}, which is neither a device nor one of {', '.join(DEVICE_MAP_STRATEGIES)}"
            ) from None
        check_available(parsed, target)
