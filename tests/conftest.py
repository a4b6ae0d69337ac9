"""Test configuration: real data, a private cache, and no network.

Data, two ways (README "Data"):

* ``sample_data`` (fixture): points ``L2O_DATA_DIR`` at the small real samples committed in
  ``tests/fixtures/data`` (600 + 200 MNIST digits, 300 + 100 CIFAR-10 images) and gives the
  loaders their sizes and MD5s, for the tests that need *some* real data (loaders, tasks, CLI).
  They run everywhere, including a fresh clone without network.
* ``@pytest.mark.requires_full_data("mnist", ...)``: the test needs the full set (paper parity
  values, statistics of the whole set); it skips, naming what is missing and where it looked,
  unless ``$L2O_DATA_DIR`` (default: ``../shared/data`` beside the checkout, else the user cache
  where ``l2o demo`` downloads) holds it. CI has ``../shared/data``, so nothing skips there.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
#: the sample's MNIST train split is its first 500 images: 100 are held out as validation
SAMPLE_MNIST_VALIDATION_SIZE = 100

if SHARED_DATA.is_dir():
    os.environ.setdefault("L2O_DATA_DIR", str(SHARED_DATA))
os.environ.setdefault("L2O_CACHE_DIR", str(Path(tempfile.gettempdir()) / "l2o-test-cache"))


def _full_data_missing(name: str) -> str | None:
    """Why the full data set ``name`` is not available to the tests, or None."""
    from l2o import data

    root = data.data_dir()
    if name == "mnist":
        missing = [s for s in data.MNIST_FILES if data._mnist_file(root / "mnist", s) is None]
        return f"MNIST files {', '.join(missing)} not in {root / 'mnist'}" if missing else None
    if name == "cifar10":
        return None if data._find_cifar10(root) else f"no CIFAR-10 in {root / 'cifar10'}"
    raise ValueError(f"requires_full_data: unknown data set {name!r}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_full_data(*names): needs the full data sets (default mnist and cifar10); "
        "skips with the reason when $L2O_DATA_DIR does not hold them",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires_full_data"):
        reasons = [r for n in mark.args or ("mnist", "cifar10") if (r := _full_data_missing(n))]
        if reasons:
            pytest.skip(
                f"needs the full data set: {'; '.join(reasons)} (set L2O_DATA_DIR to a folder "
                "holding mnist/ and cifar10/, see README 'Data')"
            )


def _clear_data_caches() -> None:
    from l2o import data
    from l2o.tasks import datasets

    data.clear_memory_cache()
    datasets.split_arrays.cache_clear()


@pytest.fixture
def sample_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Use the committed real samples (tests/fixtures/data) as the data sets; return their root."""
    from l2o import data
    from l2o.tasks import datasets

    spec = json.loads((FIXTURE_DATA / "sample.json").read_text())
    for stem, (md5, shape) in spec["mnist"].items():
        monkeypatch.setitem(data.MNIST_FILES, stem, (md5, tuple(shape)))
    monkeypatch.setattr(
        data, "_CIFAR_SHAPES", {key: tuple(shape) for key, shape in spec["cifar10"].items()}
    )
    monkeypatch.setattr(datasets, "MNIST_VALIDATION_SIZE", SAMPLE_MNIST_VALIDATION_SIZE)
    monkeypatch.setenv("L2O_DATA_DIR", str(FIXTURE_DATA))
    _clear_data_caches()
    yield FIXTURE_DATA
    _clear_data_caches()


def _no_network(*args, **kwargs):
    raise OSError("tests must not touch the network")


@pytest.fixture(autouse=True)
def _block_network(monkeypatch):
    import l2o.data

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(l2o.data, "_npm_pack", _no_network)


def needs_shared_data():
    return pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present")
