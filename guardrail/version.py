"""The installed package's version (read from its metadata; a bare source tree says so)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lalm-guardrail")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
