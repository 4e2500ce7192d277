"""Real-weight testbeds, found by plugin: the SDK ships none.

A separate package (the repository's ``testbeds/``: distribution ``lalm-guardrail-testbeds``,
``pip install -e ./testbeds``) registers a provider under the entry-point group ``guardrail.testbeds``.
`guardrail demo`, `guardrail eval --testbed NAME [--spoken]` and `guardrail bench --testbed NAME` ask it
for models by name and, for spoken evaluation, for speech; `guardrail testbeds list | build NAME` lists and
builds them. The dependency points one way: the testbeds depend on the SDK, the SDK only knows this
entry-point group.

Any package can provide testbeds: an object with the methods of :class:`TestbedProvider`, registered as

    [project.entry-points."guardrail.testbeds"]
    mine = "my_package.module:PROVIDER"
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol

from guardrail.errors import RequestError, TestbedsNotInstalledError

ENTRY_POINT_GROUP = "guardrail.testbeds"
INSTALL_HINT = "install the testbeds: pip install -e ./testbeds"


class SpokenText(Protocol):
    """Speech that keeps its text: ``os.fspath(x)`` is a WAV file of the words ``x.text``
    (``guardrail.evaluation.spoken.SpokenQuestion`` is one)."""

    @property
    def text(self) -> str: ...

    def __fspath__(self) -> str: ...


class TestbedProvider(Protocol):
    """What a testbeds package offers the SDK. A provider may also offer ``is_built(name) -> bool`` (the
    testbed loads from the local cache, offline) and ``build(name) -> path`` (build it there), which
    `guardrail testbeds list|build` use; without ``build`` a testbed is built by loading it."""

    def names(self) -> list[str]:
        """Testbeds that `load` accepts."""

    def load(self, name: str) -> tuple[Any, Any]:
        """``(model, processor)`` of a testbed, in eval mode (built first when the cache lacks it)."""

    def speak(self, text: str) -> SpokenText:
        """The text spoken into a WAV file that keeps its text (a ``guardrail.evaluation.spoken.SpokenQuestion``)."""


def provider_entry_points() -> list[EntryPoint]:
    """The installed providers' entry points, by name."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def find_provider() -> TestbedProvider:
    """The installed testbed provider (the first by entry-point name when there are several).

    Raises TestbedsNotInstalledError, saying how to install them, when none is installed or it fails to import.
    """
    found = provider_entry_points()
    if not found:
        raise TestbedsNotInstalledError(
            f"no real-weight testbeds are installed (entry-point group {ENTRY_POINT_GROUP!r} is empty); {INSTALL_HINT}"
        )
    try:
        return found[0].load()
    except ImportError as exc:
        raise TestbedsNotInstalledError(
            f"the testbed provider {found[0].value} failed to import ({exc}); {INSTALL_HINT}"
        ) from exc


def load_testbed(name: str) -> tuple[Any, Any]:
    """``(model, processor)`` of the testbed ``name``, from the installed provider."""
    return find_provider().load(name)


def testbed_names() -> list[str]:
    """The testbeds the installed provider offers."""
    return list(find_provider().names())


def testbed_states() -> list[tuple[str, bool | None]]:
    """(name, whether it is built) for each testbed the installed provider offers; None when the provider
    cannot tell."""
    provider = find_provider()
    is_built = getattr(provider, "is_built", None)
    return [(name, bool(is_built(name)) if is_built is not None else None) for name in provider.names()]


def build_testbed(name: str) -> str:
    """Build the testbed ``name`` into the provider's cache; where it is (what the provider reports)."""
    provider = find_provider()
    if name not in provider.names():
        raise RequestError(f"unknown testbed {name!r}; known: {', '.join(provider.names())}")
    build = getattr(provider, "build", None)
    if build is None:  # a provider without build() builds what load() needs
        provider.load(name)
        return "the provider's cache"
    return str(build(name))
