"""Reading policy files: `extends` chains, `${VAR}` interpolation, relative model paths, deep merging.

- `extends: ../default.yaml` (a path relative to the extending file) or `extends: default` (a
  policy shipped with the package) loads that policy first and deep-merges this file over it:
  mappings merge key by key, lists and scalars (and `null`) replace. Chains are allowed; a cycle
  is an error that names it.
- `${NAME}` in a string value is replaced by the environment variable NAME, `${NAME:-fallback}`
  by its value or `fallback` when it is unset or empty, and `$${` writes a literal `${`. An unset
  variable without a fallback is an error naming the variable, the file and the field path.
  Substitution happens before validation, so `alpha: ${ALPHA:-0.1}` still has to be a number.
- Relative `model.artifact` and `model.probe` paths (and `model.path` when it starts with `.` or
  names a folder next to the policy) are resolved against the folder of the file that sets them.
- A file that does not set `name` is named after itself (`kids-voice-app.yaml` -> kids-voice-app).

The result is a chain of `PolicyLayer`s, base first; `merge_chain` folds it into the one mapping
that `Policy` validates. The inputs are never mutated.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from guardrail.errors import PolicyError
from guardrail.resources import data_dir, shipped_policy


class PolicyLayer:
    """One file of an `extends` chain, after interpolation and path resolution."""

    def __init__(self, source: str, data: dict[str, Any]):
        self.source, self.data = source, data


def field_path(path: tuple[Any, ...]) -> str:
    """A field's location as users write it: `steering.alpha` (`<root>` for the whole policy)."""
    return ".".join(str(p) for p in path) or "<root>"


# -- where policies are --------------------------------------------------------------------------------
def shipped_policy_names() -> list[str]:
    """Names of the policies shipped with the package ("default", "gated", ...), sorted."""
    return sorted(p.stem for p in data_dir("policies").glob("*.yaml"))


def resolve_policy_ref(ref: str, relative_to: Path | None = None) -> Path:
    """A policy reference as written in `extends:` or on the command line: a path (relative to
    `relative_to`, default the working directory) or the name of a shipped policy."""
    path = Path(ref).expanduser()
    candidate = path if path.is_absolute() or relative_to is None else relative_to / path
    looks_like_path = any(sep in ref for sep in ("/", os.sep)) or path.suffix in (".yaml", ".yml")
    if looks_like_path or candidate.exists():
        return Path(os.path.normpath(candidate))
    return shipped_policy(ref)


def locate_policy(ref: str | Path) -> Path:
    """`resolve_policy_ref` for `Policy.load`: a name that is neither a file nor a shipped policy is an error."""
    path = resolve_policy_ref(str(ref))
    if not path.exists() and path.parent == data_dir("policies"):
        raise PolicyError(
            f"no policy file {str(ref)!r} and no shipped policy of that name; shipped: "
            f"{', '.join(shipped_policy_names())}"
        )
    return path


# -- chains ------------------------------------------------------------------------------------------
def chain_from_file(path: Path) -> list[PolicyLayer]:
    """The layers of the policy file at `path` and of every policy it extends, base first."""
    return _load_chain(path, ())


def chain_from_dict(data: Mapping[str, Any], source: str, base_dir: str | Path | None) -> list[PolicyLayer]:
    """The layers of a policy given as a mapping named `source`; `extends:` and relative model paths
    are resolved against `base_dir` (None: the working directory for `extends`, paths kept as given)."""
    if not isinstance(data, Mapping):
        raise PolicyError(f"{source}: a policy is a mapping of sections, got {type(data).__name__}")
    folder = Path(base_dir) if base_dir is not None else None
    return _chain_from(data, source, folder, ())


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a mapping of sections, got {type(data).__name__}")
    return data


def _load_chain(path: Path, stack: tuple[Path, ...]) -> list[PolicyLayer]:
    real = path.resolve()
    if real in stack:
        cycle = " -> ".join(str(p) for p in (*stack[stack.index(real) :], real))
        raise PolicyError(f"policy extends cycle: {cycle}")
    data = _read(path)
    if "name" not in data:
        data = {**data, "name": path.stem}
    return _chain_from(data, str(path), path.parent, (*stack, real))


def _chain_from(
    data: Mapping[str, Any], source: str, folder: Path | None, stack: tuple[Path, ...]
) -> list[PolicyLayer]:
    layer: dict[str, Any] = _interpolate(data, source, ())
    parent = layer.pop("extends", None)
    if folder is not None:
        layer = _resolve_model_paths(layer, folder)
    chain: list[PolicyLayer] = []
    if parent is not None:
        if not isinstance(parent, str) or not parent.strip():
            raise PolicyError(
                f"invalid policy {source}:\n  extends: expected a policy file path or the name of a "
                f"shipped policy (got {parent!r}); accepted names: {', '.join(shipped_policy_names())}"
            )
        target = resolve_policy_ref(parent.strip(), folder)
        if not target.is_file():
            raise PolicyError(
                f"invalid policy {source}:\n  extends: no policy file {str(target)!r} (from "
                f"{parent!r}); give a path relative to {source} or one of the shipped policies: "
                f"{', '.join(shipped_policy_names())}"
            )
        chain = _load_chain(target, stack)
    return [*chain, PolicyLayer(source, layer)]


# -- environment and paths ---------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _interpolate(node: Any, source: str, path: tuple[Any, ...]) -> Any:
    """A copy of `node` with ${NAME} / ${NAME:-default} substituted in every string value."""
    if isinstance(node, Mapping):
        return {key: _interpolate(value, source, (*path, key)) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_interpolate(value, source, (*path, i)) for i, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _PLACEHOLDER.sub(lambda m: _substitute(m, source, path), node)
    return copy.deepcopy(node)


def _substitute(match: re.Match[str], source: str, path: tuple[Any, ...]) -> str:
    text = match.group(0)
    if text == "$${":
        return "${"
    where = field_path(path)
    if match.group(1) is None:
        raise PolicyError(
            f"invalid policy {source}:\n  {where}: unclosed '${{'; write ${{NAME}}, "
            "${NAME:-default}, or $${ for a literal ${"
        )
    name, has_default, default = match.group(1).partition(":-")
    if not _VAR_NAME.fullmatch(name):
        raise PolicyError(
            f"invalid policy {source}:\n  {where}: malformed placeholder {text!r}; accepted: "
            "${NAME} or ${NAME:-default} with NAME made of letters, digits and _"
        )
    value = os.environ.get(name)
    if value is None or (value == "" and has_default):
        if has_default:
            return default
        raise PolicyError(
            f"invalid policy {source}:\n  {where}: environment variable {name} is not set "
            f"and {text} has no default; set {name} or write ${{{name}:-default}}"
        )
    return value


def _resolve_model_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    model = data.get("model")
    if not isinstance(model, Mapping):
        return data
    model = dict(model)
    base = Path(os.path.abspath(folder))
    for key in ("artifact", "probe", "path"):
        value = model.get(key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if path.is_absolute():
            model[key] = str(path)
        elif key != "path" or value.startswith(".") or (base / path).exists():
            model[key] = os.path.normpath(base / path)
        # else: a hub id such as "Qwen/Qwen2-Audio-7B-Instruct", kept as written
    return {**data, "model": model}


# -- merging -----------------------------------------------------------------------------------------
def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` over `base`: mappings merge recursively; lists, scalars and null replace. Returns a
    new mapping; neither input is modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_chain(chain: list[PolicyLayer]) -> dict[str, Any]:
    """The chain's layers deep-merged, base first: the mapping a `Policy` is validated from."""
    merged: dict[str, Any] = {}
    for layer in chain:
        merged = deep_merge(merged, layer.data)
    return merged
