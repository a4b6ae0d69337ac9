"""The installed package's version, read from its metadata (one source of truth: pyproject.toml).

A module of its own so that any part of the package (checkpoint cards, the trainer) can read the
version without importing the package root and everything it loads.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("l2o")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
