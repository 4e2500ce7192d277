"""Reading one policy file safely: a size cap, strict UTF-8, and a YAML loader without the features
that let a small file grow without bound or mean two things.

- At most `MAX_POLICY_BYTES` (1 MiB), a regular file (a FIFO or device is refused before it is opened).
- UTF-8 text; otherwise the error names the byte offset and line of the first invalid byte.
- YAML anchors and aliases (`&name`, `*name`, and so `<<: *name`) are refused: a 288-byte file of nested
  aliases expands to gigabytes. Sharing between files is what `extends:` is for.
- A key given twice in one mapping is refused (YAML would silently keep the last one).
- Nesting deeper than `MAX_DEPTH` levels is refused (a policy is 3 levels deep).
- A scalar YAML accepts but Python cannot build (a 5000-digit integer, 2001-02-30) is a `PolicyError`.

Every error is a `PolicyError` naming the file and the line, and never shows more than `shown` allows.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from guardrail.errors import PolicyError

MAX_POLICY_BYTES = 1 << 20
MAX_DEPTH = 32
SHOWN_CHARS = 200
MERGE_TAG = "tag:yaml.org,2002:merge"


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, cut to `limit` characters (a policy value can be megabytes)."""
    try:
        text = repr(value)
    except Exception:  # a >4300-digit int (Python's int-to-str limit), an object whose repr fails
        return f"a {type(value).__name__} that cannot be shown"
    if len(text) > limit:
        return f"{text[:limit]}... ({len(text)} characters)"
    return text


class PolicyYamlLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` without anchors or aliases, duplicate keys or deep nesting (see the module doc)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source, self.depth = source, 0
        self.name = source  # YAML's own messages say `in "<source>", line N` instead of "<unicode string>"

    def fail(self, mark: Any, message: str) -> PolicyError:
        return PolicyError(f"{self.source}, line {mark.line + 1}, column {mark.column + 1}: {message}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            raise self.fail(
                event.start_mark,
                f"YAML anchors and aliases (&name, *name) are not accepted in policy files (found the {kind} "
                f"{shown(anchor, 40)}); write the values out, or share them between files with extends:",
            )
        if self.depth >= MAX_DEPTH:
            raise self.fail(event.start_mark, f"nested deeper than {MAX_DEPTH} levels; a policy is 3 levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except PolicyError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # int("9" * 5000), date(2001, 2, 30), ...
            reason = str(exc).split("; use sys.set_int_max_str_digits")[0][:SHOWN_CHARS]
            raise self.fail(node.start_mark, f"this value cannot be read: {reason}") from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if line is not None:  # equal keys collide in the dict too (1, 1.0 and true are one key)
                raise self.fail(
                    key_node.start_mark,
                    f"duplicate key {shown(key, 80)} (first at line {line}); give each key once per mapping",
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


# what pathlib raises for a path it cannot use: too long (OSError), a null byte (ValueError), a link loop
PATH_ERRORS = (OSError, ValueError, RuntimeError)


def path_problem(exc: BaseException) -> str:
    """Why a path cannot be used, without repeating the path (it may come from the environment)."""
    if isinstance(exc, OSError):
        return exc.strerror or "it cannot be read"
    return "a loop of symbolic links" if isinstance(exc, RuntimeError) else "the path contains a null byte"


def path_exists(path: Path) -> bool:
    """`path.exists()`, False for a path the system cannot use."""
    try:
        return path.exists()
    except PATH_ERRORS:
        return False


def read_policy_file(path: Path) -> dict[str, Any]:
    """The mapping in the policy file at `path` (`{}` for an empty file), read under the rules above."""
    try:
        mode = path.stat().st_mode
        regular = stat.S_ISREG(mode)
        if regular:
            with path.open("rb") as stream:
                raw = stream.read(MAX_POLICY_BYTES + 1)
    except PATH_ERRORS as exc:
        raise PolicyError(f"cannot read policy file {shown(str(path))}: {path_problem(exc)}") from exc
    if not regular:
        raise PolicyError(f"cannot read policy file {path}: not a regular file")
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy file {path} is larger than 1 MiB; a policy is a few hundred bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise PolicyError(
            f"{path} is not UTF-8 text: byte {exc.start} (line {line}) is 0x{raw[exc.start]:02x}; "
            "save the file as UTF-8"
        ) from None
    return parse_policy_text(text, str(path))


def parse_policy_text(text: str, source: str) -> dict[str, Any]:
    """The mapping in YAML `text` read from `source` (`{}` for an empty document)."""
    try:
        loader = PolicyYamlLoader(text, source)  # checks the characters first: ReaderError
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a mapping of sections, got {type(data).__name__}")
    return data
