"""Where the data shipped with the package lives (adapter specs, policies).

In a wheel they sit in guardrail/_data/; in a source checkout (editable install, tests)
they are the top-level adapters/ and policies/ folders.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Folder of shipped `kind` files ("adapters" or "policies")."""
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the package's {kind}/ folder is missing; reinstall lalm-guardrail")


def shipped_policy(name: str) -> Path:
    """Path of a policy shipped with the package, e.g. shipped_policy("default")."""
    return data_dir("policies") / f"{name}.yaml"
