"""Reading policy files: `extends` chains, `${VAR}` interpolation, relative model paths, deep merging.

- `extends: base/default.yaml` (a path relative to the extending file) or `extends: default` (a
  policy shipped with the package) loads that policy first and deep-merges this file over it:
  mappings merge key by key, lists and scalars (and `null`) replace. Chains are allowed; a cycle
  is an error that names it. `extends` reads only .yaml/.yml files in the extending file's folder or
  below (symbolic links resolved first; for `Policy.from_dict`, below `base_dir` or the working
  directory), or a shipped policy (by name, or a file in the shipped policies folder): a policy
  cannot make the loader read, and echo into errors, any other file.
- `${NAME}` in a string value is replaced by the environment variable NAME, `${NAME:-fallback}`
  by its value or `fallback` when it is unset or empty, and `$${` writes a literal `${`. An unset
  variable without a fallback is an error naming the variable, the file and the field path.
  Substitution happens before validation, so `alpha: ${ALPHA:-0.1}` still has to be a number; an
  error about a value read from the environment names the variable and never shows the value.
- Relative `model.artifact` and `model.probe` paths (and `model.path` when it starts with `.` or
  names a folder next to the policy) are resolved against the folder of the file that sets them.
- A file that does not set `name` is named after itself (`kids-voice-app.yaml` -> kids-voice-app).
- Files are read by `guardrail.policy.reading` (1 MiB cap, UTF-8, no YAML aliases or duplicate keys);
  a mapping nested deeper than `MAX_DEPTH` (or containing itself) is refused.

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

from guardrail.errors import PolicyError
from guardrail.policy.reading import MAX_DEPTH, PATH_ERRORS, path_exists, path_problem, read_policy_file, shown
from guardrail.resources import data_dir, shipped_policy

# field path -> the environment variables whose values a `${...}` placed there
EnvFields = dict[tuple[Any, ...], list[str]]


class PolicyLayer:
    """One file of an `extends` chain, after interpolation and path resolution. `from_env` lists the
    fields whose value came (in part) from environment variables: errors name the variable, not the value."""

    def __init__(self, source: str, data: dict[str, Any], from_env: EnvFields | None = None):
        self.source, self.data, self.from_env = source, data, from_env or {}


def env_names(from_env: EnvFields, loc: tuple[Any, ...]) -> list[str]:
    """The environment variables whose values went into the field at `loc`, a field inside it, or the
    field that holds it (an error about any of them must not show the value)."""
    return [
        name
        for path, names in from_env.items()
        if path[: len(loc)] == loc or loc[: len(path)] == path
        for name in names
    ]


def expand_home(text: str) -> Path:
    """`Path(text)` with a leading `~` or `~user` expanded; kept as written when there is no such home."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~0": no user named 0, or no home directory at all
        return Path(text)


def field_path(path: tuple[Any, ...]) -> str:
    """A field's location as users write it: `steering.alpha` (`<root>` for the whole policy)."""
    text = ".".join(str(p) for p in path) or "<root>"
    return text if len(text) <= 120 else f"{text[:120]}... ({len(text)} characters)"


# -- where policies are --------------------------------------------------------------------------------
def shipped_policy_names() -> list[str]:
    """Names of the policies shipped with the package ("default", "gated", ...), sorted."""
    return sorted(p.stem for p in data_dir("policies").glob("*.yaml"))


def resolve_policy_ref(ref: str, relative_to: Path | None = None) -> Path:
    """A policy reference as written in `extends:` or on the command line: a path (relative to
    `relative_to`, default the working directory) or the name of a shipped policy."""
    path = expand_home(ref)
    candidate = path if path.is_absolute() or relative_to is None else relative_to / path
    looks_like_path = any(sep in ref for sep in ("/", os.sep)) or path.suffix in (".yaml", ".yml")
    if looks_like_path or path_exists(candidate):
        return Path(os.path.normpath(candidate))
    return shipped_policy(ref)


def locate_policy(ref: str | Path) -> Path:
    """`resolve_policy_ref` for `Policy.load`: a name that is neither a file nor a shipped policy is an error."""
    path = resolve_policy_ref(str(ref))
    if not path_exists(path) and path.parent == data_dir("policies"):
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


def _load_chain(path: Path, stack: tuple[Path, ...]) -> list[PolicyLayer]:
    try:
        real = path.resolve()
    except PATH_ERRORS as exc:
        raise PolicyError(f"cannot read policy file {shown(str(path))}: {path_problem(exc)}") from None
    if real in stack:
        cycle = " -> ".join(str(p) for p in (*stack[stack.index(real) :], real))
        raise PolicyError(f"policy extends cycle: {cycle}")
    data = read_policy_file(path)
    if "name" not in data:
        data = {**data, "name": path.stem}
    return _chain_from(data, str(path), path.parent, (*stack, real))


def _chain_from(
    data: Mapping[str, Any], source: str, folder: Path | None, stack: tuple[Path, ...]
) -> list[PolicyLayer]:
    from_env: EnvFields = {}
    layer: dict[str, Any] = _interpolate(data, source, (), from_env)
    parent = layer.pop("extends", None)
    if folder is not None:
        layer = _resolve_model_paths(layer, folder)
    chain: list[PolicyLayer] = []
    if parent is not None:
        env = env_names(from_env, ("extends",))
        what = f"the value of ${{{env[0]}}}" if env else shown(parent)
        if not isinstance(parent, str) or not parent.strip():
            raise PolicyError(
                f"invalid policy {source}:\n  extends: expected a policy file path or the name of a "
                f"shipped policy (got {what}); accepted names: {', '.join(shipped_policy_names())}"
            )
        chain = _load_chain(extends_target(parent.strip(), folder, source, what), stack)
    return [*chain, PolicyLayer(source, layer, from_env)]


def extends_target(ref: str, folder: Path | None, source: str, what: str) -> Path:
    """The file `extends: ref` in `source` (whose folder is `folder`; None: the working directory) may
    read: a .yaml/.yml file in that folder or below, or a shipped policy. `what` is how errors show `ref`."""
    names = shipped_policy_names()
    root = Path(os.path.abspath(folder if folder is not None else Path.cwd()))
    allowed = f"extends may name .yaml or .yml files in {root} or below, or a shipped policy: {', '.join(names)}"
    path = expand_home(ref)
    if not (any(sep in ref for sep in ("/", os.sep)) or path.suffix in (".yaml", ".yml") or path.is_absolute()):
        if ref in names:
            return shipped_policy(ref)
        raise PolicyError(f"invalid policy {source}:\n  extends: no shipped policy named {what}; {allowed}")
    # as written (relative stays relative: sources and messages show what users wrote); `root` is for the checks
    candidate = Path(os.path.normpath(path if path.is_absolute() else (folder or Path()) / path))
    try:
        real = candidate.resolve()
        inside = real.is_relative_to(root.resolve()) or real.is_relative_to(data_dir("policies").resolve())
        is_file = real.is_file()
    except PATH_ERRORS as exc:
        raise PolicyError(f"invalid policy {source}:\n  extends: {what}: {path_problem(exc)}; {allowed}") from None
    if real.suffix not in (".yaml", ".yml") or not inside:
        raise PolicyError(f"invalid policy {source}:\n  extends: {what} is not a file this policy may read; {allowed}")
    if not is_file:
        target = what if what != shown(ref) else shown(str(candidate))
        raise PolicyError(
            f"invalid policy {source}:\n  extends: no policy file {target} (from {what}); give a path "
            f"relative to {source} or one of the shipped policies: {', '.join(names)}"
        )
    return candidate


# -- environment and paths ---------------------------------------------------------------------------
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _interpolate(node: Any, source: str, path: tuple[Any, ...], from_env: EnvFields) -> Any:
    """A copy of `node` with ${NAME} / ${NAME:-default} substituted in every string value; the fields
    that took an environment variable's value are recorded in `from_env`."""
    if len(path) > MAX_DEPTH:
        raise PolicyError(
            f"invalid policy {source}:\n  {field_path(path[:3])}: nested deeper than {MAX_DEPTH} levels "
            "(or a mapping that contains itself); a policy is 3 levels deep"
        )
    if isinstance(node, Mapping):
        return {key: _interpolate(value, source, (*path, key), from_env) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_interpolate(value, source, (*path, i), from_env) for i, value in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _PLACEHOLDER.sub(lambda m: _substitute(m, source, path, from_env), node)
    if node is None or isinstance(node, (str, bytes, int, float, complex)):
        return node
    try:
        return copy.deepcopy(node)
    except Exception as exc:  # a lock, a generator... in a mapping given to Policy.from_dict
        raise PolicyError(
            f"invalid policy {source}:\n  {field_path(path)}: a {type(node).__name__} is not a policy value"
        ) from exc


def _substitute(match: re.Match[str], source: str, path: tuple[Any, ...], from_env: EnvFields) -> str:
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
            f"invalid policy {source}:\n  {where}: malformed placeholder {shown(text, 60)}; accepted: "
            "${NAME} or ${NAME:-default} with NAME made of letters, digits and _"
        )
    value = os.environ.get(name)
    if value is None or (value == "" and has_default):
        if has_default:
            return default
        raise PolicyError(
            f"invalid policy {source}:\n  {where}: environment variable {name} is not set "
            f"and {shown(text, 60)} has no default; set {name} or write ${{{name}:-default}}"
        )
    from_env.setdefault(path, []).append(name)
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
        path = expand_home(value)
        if path.is_absolute():
            model[key] = str(path)
        elif key != "path" or value.startswith(".") or path_exists(base / path):
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
