"""Test configuration: real data from ../shared/data, a private cache, and no network."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

if SHARED_DATA.is_dir():
    os.environ.setdefault("L2O_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("L2O_CACHE_DIR", str(Path(tempfile.gettempdir()) / "l2o-test-cache"))


def _no_network(*args, **kwargs):
    raise OSError("tests must not touch the network")


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    import l2o.data

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(l2o.data, "_npm_pack", _no_network)


def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
