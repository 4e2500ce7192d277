"""Property-based tests of policy parsing (issue #15): arbitrary YAML text, arbitrary bytes, YAML built
from the schema's own field names (with aliases, placeholders, duplicate keys and extreme numbers mixed
in) and arbitrary mappings all end in a `Policy` or a `PolicyError`, quickly, within a memory budget, with
a short message that never shows an environment variable's value.

CI runs a bounded number of examples; a longer run is a `settings(max_examples=...)` override by hand.
"""

from __future__ import annotations

import math
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import Policy, PolicyError
from guardrail.policy.loader import shipped_policy_names

SECRET_VAR, SECRET = "GR_FUZZ_SECRET", "sk-live-fuzz-0123456789"
TIME_BUDGET_S = 5.0  # per example (wall clock, so generous for a loaded machine); most take ~20 ms
MEMORY_BUDGET = 64 << 20  # peak bytes allocated while loading one example
MESSAGE_BUDGET = 12_000  # characters in one error message (20 fields of ~400 characters at most)
FUZZ = settings(  # a few seconds in all; the closing note of issue #15 has the count of a long run
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# every field name of the schema, so generated mappings reach the validators, not only "unknown field"
SECTIONS = {name: list(field.annotation.model_fields) for name, field in Policy.model_fields.items() if
            hasattr(field.annotation, "model_fields")}  # fmt: skip
FIELDS = sorted({*Policy.model_fields, "extends", *(f for fields in SECTIONS.values() for f in fields)})


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder to write policies into, with a base to extend and the secret in the environment."""
    path = tmp_path_factory.mktemp("fuzz")
    (path / "base.yaml").write_text("steering: {alpha: 0.3}\n", encoding="utf-8")
    before = os.environ.get(SECRET_VAR)
    os.environ[SECRET_VAR] = SECRET
    yield path
    if before is None:
        del os.environ[SECRET_VAR]
    else:
        os.environ[SECRET_VAR] = before


def loads_or_policy_error(load: Callable[[], Policy]) -> Policy | None:
    """Run `load`; a `PolicyError` is fine (checked for size and secrets), anything else fails the test."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        return load()
    except PolicyError as exc:
        message = str(exc)
        assert len(message) < MESSAGE_BUDGET, message[:500]
        assert SECRET not in message, message
        return None
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < TIME_BUDGET_S, f"took {elapsed:.2f} s"
        assert peak < MEMORY_BUDGET, f"peak {peak >> 20} MiB"


def load_text(folder: Path, text: str | bytes) -> Policy | None:
    path = folder / "p.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return loads_or_policy_error(lambda: Policy.from_yaml(path))


# -- strategies --------------------------------------------------------------------------------------
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**60), max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 10**9, 1e9, 1e-9, 4096, 4097, 9999, 10_000]),
)
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["all", "0-3", "0-30000000", "5-2", "probe", "off", "always", "steer", "json", "static"]),
    st.sampled_from(shipped_policy_names() + ["base.yaml", "../base.yaml", "/etc/passwd", "missing.yaml"]),
    st.sampled_from(["${GR_FUZZ_SECRET}", "x${GR_FUZZ_SECRET}", "${GR_FUZZ_UNSET:-0.2}", "${", "$${x}", "${1}"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))


def values(depth: int = 3) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(keys, inner, max_size=6)),
        max_leaves=20,
    )


policy_like = st.fixed_dictionaries(
    {},
    optional={
        **{
            section: st.dictionaries(st.sampled_from(fields), values(), max_size=6)
            for section, fields in SECTIONS.items()
        },  # fmt: skip
        "name": texts,
        "extends": texts,
        "system_prompt": st.one_of(st.none(), texts),
        "steering": st.fixed_dictionaries(
            {}, optional={"alpha": numbers, "layers": values(), "safe_rank": numbers, "safe_strength": numbers}
        ),
    },
)


@st.composite
def yaml_documents(draw: st.DrawFn) -> str:
    """YAML from `policy_like`, sometimes with an alias, a duplicate key, an anchor or deep nesting added."""
    text = yaml.safe_dump(draw(policy_like), allow_unicode=True, sort_keys=False)
    extra = draw(
        st.sampled_from(
            [
                "",
                "x: &a [1, 2]\ny: [*a, *a]\n",
                "steering: {alpha: 0.2}\nsteering: {alpha: 0.3}\n",
                "gate: {mode: probe, mode: 'off'}\n",
                "description: " + "[" * 40 + "]" * 40 + "\n",
                "limits: {max_new_tokens: " + "9" * 5000 + "}\n",
                "description: 2001-02-30\n",
                "description: !!binary aGVsbG8=\n",
                "description: !!python/name:os.system\n",
                "--- \n---\n",
            ]
        )
    )
    return text + extra


# -- properties --------------------------------------------------------------------------------------
@FUZZ
@given(text=st.text(max_size=2000))
def test_any_text(folder: Path, text: str) -> None:
    load_text(folder, text)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_any_bytes(folder: Path, data: bytes) -> None:
    load_text(folder, data)


@FUZZ
@given(text=yaml_documents())
def test_yaml_built_from_the_schema(folder: Path, text: str) -> None:
    load_text(folder, text)


@FUZZ
@given(data=st.dictionaries(keys, values(), max_size=8))
def test_any_mapping(folder: Path, data: dict[Any, Any]) -> None:
    policy = loads_or_policy_error(lambda: Policy.from_dict(data, base_dir=folder))
    if policy is not None:  # what validated is usable: finite, bounded numbers
        assert math.isfinite(policy.steering.alpha) and policy.steering.alpha <= 10_000
        assert math.isfinite(policy.limits.max_audio_seconds) and policy.limits.max_audio_seconds <= 3600
        assert policy.steering.layers == "all" or max(policy.steering.layers) < 10_000


@FUZZ
@given(data=policy_like)
def test_policy_shaped_mappings(folder: Path, data: dict[str, Any]) -> None:
    loads_or_policy_error(lambda: Policy.from_dict(data, base_dir=folder))


def test_a_mapping_that_contains_itself(folder: Path) -> None:
    data: dict[str, Any] = {"steering": {}}
    data["steering"]["self"] = data
    with pytest.raises(PolicyError, match="nested deeper than"):
        Policy.from_dict(data)
