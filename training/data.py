"""Data set loaders and the ``data`` step of the training pipeline.

Every loader returns a :class:`Dataset` holding *raw* values: tabular features as
float32 in the schema's feature order, images as uint8 0..255 with a trailing channel
axis.  Preprocessing (normalisation, pixel rescaling) happens inside the Keras model.

Where the files come from (:func:`locate`), first hit wins:

1. the ``data_dir`` argument, else ``$LAYERSCOPE_DATA_DIR`` -- each file is looked for
   in the data set's folder (``creditcard/``, ``mnist/``, ``fashion-mnist/``) and then
   directly in the directory;
2. Fashion-MNIST only: Debian's ``/usr/share/datasets/fashion-mnist/``
   (package ``dataset-fashion-mnist``);
3. earlier downloads in the download cache (``$LAYERSCOPE_CACHE_DIR``, default
   ``~/.cache/layerscope/datasets``);
4. the official download (MNIST, Fashion-MNIST; checksum-verified) -- only when a
   network is reachable: a 2 s connect probe decides, and ``LAYERSCOPE_OFFLINE=1`` says
   "no network" without probing.  The credit-card set has no unauthenticated download.

Otherwise :class:`DataNotFound` says which file to put where.

Synthetic transactions (:func:`synthetic_transactions`, data set name
``synthetic_creditcard``) are produced only when asked for by name; they are flagged
``synthetic=True`` and never substitute for missing real data.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASETS = ("creditcard", "fashion_mnist", "mnist", "digits")
SYNTHETIC_CREDITCARD = "synthetic_creditcard"

CREDITCARD_FEATURES = ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount"]
CREDITCARD_COLUMNS = CREDITCARD_FEATURES + ["Class"]
CREDITCARD_CLASSES = ["legit", "fraud"]
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

ENV_DATA_DIR = "LAYERSCOPE_DATA_DIR"
ENV_OFFLINE = "LAYERSCOPE_OFFLINE"
ENV_CACHE_DIR = "LAYERSCOPE_CACHE_DIR"
ENV_MIRROR = "LAYERSCOPE_DATA_MIRROR"   # base URL replacing the official origins

DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NETWORK_PROBE_SECONDS = 2.0
DOWNLOAD_TIMEOUT_SECONDS = 30.0         # per socket operation, not per file

IDX_IMAGES_MAGIC = 2051   # 0x00000803: unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 2049   # 0x00000801: unsigned byte, 1 dimension

FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# name -> (folder under the data dir, alternative file sets in order of preference).
# The complete Kaggle file wins over the sample when both are present.
_LAYOUT: dict[str, tuple[str, tuple[tuple[str, ...], ...]]] = {
    "creditcard": ("creditcard", (("creditcard.csv",), ("creditcard_sample.csv",))),
    "mnist": ("mnist", (("mnist.npz",),)),
    "fashion_mnist": (
        "fashion-mnist",
        (FASHION_FILES, tuple(f[: -len(".gz")] for f in FASHION_FILES)),
    ),
}

# Official downloads: file name -> (URL, hash algorithm, digest).
_MNIST_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_FASHION_ORIGIN = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
DOWNLOADS: dict[str, list[tuple[str, str, str, str]]] = {
    "mnist": [
        # the checksum keras.datasets.mnist verifies
        ("mnist.npz", _MNIST_ORIGIN + "mnist.npz", "sha256",
         "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),
    ],
    "fashion_mnist": [
        # the MD5 sums published in the Fashion-MNIST README
        ("train-images-idx3-ubyte.gz", _FASHION_ORIGIN + "train-images-idx3-ubyte.gz", "md5",
         "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        ("train-labels-idx1-ubyte.gz", _FASHION_ORIGIN + "train-labels-idx1-ubyte.gz", "md5",
         "25c81989df183df01b3e8a0aad5dffbe"),
        ("t10k-images-idx3-ubyte.gz", _FASHION_ORIGIN + "t10k-images-idx3-ubyte.gz", "md5",
         "bef4ecab320f06d8554ea6380940ec79"),
        ("t10k-labels-idx1-ubyte.gz", _FASHION_ORIGIN + "t10k-labels-idx1-ubyte.gz", "md5",
         "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
}

_WHAT_TO_PUT = {
    "creditcard": "creditcard_sample.csv or the full creditcard.csv "
                  "(columns Time,V1..V28,Amount,Class)",
    "mnist": "mnist.npz (keras layout: keys x_train, y_train, x_test, y_test)",
    "fashion_mnist": ", ".join(FASHION_FILES) + " (the original IDX files)",
}


class DataNotFound(RuntimeError):
    """No file for a data set was found locally and none could be downloaded."""


class DataFormatError(ValueError):
    """A data file exists but does not have the expected format; the message names the file."""


# --------------------------------------------------------------------------- Dataset


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    name: str
    x: np.ndarray
    y: np.ndarray
    class_names: list[str]
    feature_names: list[str] | None
    source: str
    sha256: str
    synthetic: bool
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} inputs but {len(self.y)} labels")
        if (self.x_test is None) != (self.y_test is None):
            raise ValueError(f"{self.name}: x_test and y_test must be given together")
        if self.x_test is not None and len(self.x_test) != len(self.y_test):
            raise ValueError(f"{self.name}: {len(self.x_test)} test inputs but "
                             f"{len(self.y_test)} test labels")

    @property
    def kind(self) -> str:
        """``"tabular"`` for (n, features) inputs, ``"image"`` for (n, H, W, C)."""
        return "tabular" if self.x.ndim == 2 else "image"

    def __repr__(self) -> str:
        test = "" if self.x_test is None else f", x_test={self.x_test.shape}"
        return (f"Dataset(name={self.name!r}, kind={self.kind!r}, x={self.x.shape} "
                f"{self.x.dtype}{test}, classes={len(self.class_names)}, "
                f"synthetic={self.synthetic}, source={self.source!r})")


# --------------------------------------------------------------------------- hashing


def file_sha256(path: str | os.PathLike) -> str:
    return _file_digest(path, "sha256")


def _file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_sha256(paths: Iterable[Path]) -> str:
    """One file: its sha256.  Several: sha256 over sorted ``"name:digest\\n"`` lines."""
    paths = list(paths)
    if len(paths) == 1:
        return file_sha256(paths[0])
    lines = sorted(f"{Path(p).name}:{file_sha256(p)}\n" for p in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()
                          + np.ascontiguousarray(y).tobytes()).hexdigest()


# --------------------------------------------------------------------------- credit card CSV


def load_creditcard_csv(path: str | os.PathLike) -> Dataset:
    """Load a credit-card transactions CSV (``Time, V1..V28, Amount, Class``).

    Columns may come in any order (quoted or not); missing, unexpected or duplicated
    columns, rows of the wrong length, non-numeric or non-finite cells and ``Class``
    values other than 0/1 raise :class:`DataFormatError` naming the line and column.
    """
    path = Path(path).resolve()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: cannot read as a CSV text file ({e})") from None
    if not header:
        raise DataFormatError(f"{path}: the file is empty; expected a header "
                              f"{','.join(CREDITCARD_COLUMNS)}")
    header = [h.strip() for h in header]
    _check_creditcard_header(path, header)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "input contained no data"
            data = np.loadtxt(path, delimiter=",", skiprows=1, quotechar='"',
                              dtype=np.float64, ndmin=2, encoding="utf-8-sig")
    except ValueError:
        _raise_first_bad_cell(path, header)
        raise  # _raise_first_bad_cell always raises; kept for type checkers
    if data.shape[0] == 0:
        raise DataFormatError(f"{path}: the header is there but there are no data rows")
    if data.shape[1] != len(header):
        _raise_first_bad_cell(path, header)

    bad = ~np.isfinite(data)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataFormatError(f"{path}: line {_line_of_row(path, r)}, column {header[c]!r}: "
                              f"value {float(data[r, c])} is not a finite number")
    col = {name: i for i, name in enumerate(header)}
    cls = data[:, col["Class"]]
    bad_cls = (cls != 0) & (cls != 1)
    if bad_cls.any():
        r = int(np.flatnonzero(bad_cls)[0])
        raise DataFormatError(f"{path}: line {_line_of_row(path, r)}, column 'Class': "
                              f"{cls[r]:g} is not a class label; allowed: 0 (legit), 1 (fraud)")
    x = data[:, [col[name] for name in CREDITCARD_FEATURES]].astype(np.float32)
    y = cls.astype(np.int64)
    return Dataset(name="creditcard", x=x, y=y, class_names=list(CREDITCARD_CLASSES),
                   feature_names=list(CREDITCARD_FEATURES), source=str(path),
                   sha256=file_sha256(path), synthetic=False)


def _check_creditcard_header(path: Path, header: list[str]) -> None:
    seen: set[str] = set()
    duplicated = [h for h in header if h in seen or seen.add(h)]
    missing = [c for c in CREDITCARD_COLUMNS if c not in header]
    extra = [h for h in header if h not in CREDITCARD_COLUMNS]
    if missing or extra or duplicated:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        if duplicated:
            parts.append(f"duplicated columns {sorted(set(duplicated))}")
        raise DataFormatError(f"{path}: header does not match the credit-card schema "
                              f"Time,V1..V28,Amount,Class: {'; '.join(parts)}")


def _line_of_row(path: Path, row_index: int) -> int:
    """File line number (1-based) of data row ``row_index`` (0-based; blank lines skipped)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        seen = -1
        for row in reader:
            if row and row != [""]:
                seen += 1
                if seen == row_index:
                    return reader.line_num
    return row_index + 2


def _raise_first_bad_cell(path: Path, header: list[str]) -> None:
    """Slow path after a fast parse failed: find the first offending cell and say where."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            line = reader.line_num
            if not row or row == [""]:
                continue          # blank lines are skipped, as by the fast path
            if len(row) != len(header):
                raise DataFormatError(f"{path}: line {line} has {len(row)} cells, "
                                      f"expected {len(header)} ({','.join(header)})")
            for name, cell in zip(header, row, strict=True):
                try:
                    float(cell)
                except ValueError:
                    raise DataFormatError(f"{path}: line {line}, column {name!r}: "
                                          f"{cell!r} is not a number") from None
    raise DataFormatError(f"{path}: could not be parsed as a numeric CSV")


# --------------------------------------------------------------------------- IDX


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                f.seek(0)
                return f.read()
        with gzip.open(path, "rb") as g:
            return g.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataFormatError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from None


def _load_idx(path: str | os.PathLike, expected_magic: int, what: str) -> np.ndarray:
    path = Path(path).resolve()
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: {len(data)} bytes, too short for an IDX header")
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        hint = {IDX_IMAGES_MAGIC: " (that is an IDX images file)",
                IDX_LABELS_MAGIC: " (that is an IDX labels file)"}.get(magic, "")
        raise DataFormatError(f"{path}: IDX magic number {magic} (0x{magic:08x}){hint}, "
                              f"expected {expected_magic} (0x{expected_magic:08x}) for {what}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header: {len(data)} bytes, "
                              f"need {header} for {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        kind = "truncated" if found < expected else "has trailing bytes"
        raise DataFormatError(f"{path}: IDX file {kind}: dimensions {list(dims)} need "
                              f"{expected} data bytes, found {found}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims).copy()


def load_idx_images(path: str | os.PathLike) -> np.ndarray:
    """uint8 array (n, rows, cols) from an IDX3 images file (gzip or plain, magic 2051)."""
    return _load_idx(path, IDX_IMAGES_MAGIC, "images")


def load_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """int64 array (n,) from an IDX1 labels file (gzip or plain, magic 2049)."""
    return _load_idx(path, IDX_LABELS_MAGIC, "labels").astype(np.int64)


def load_fashion_mnist(paths: Sequence[str | os.PathLike] | str | os.PathLike) -> Dataset:
    """Fashion-MNIST from its four IDX files (train images, train labels, test images,
    test labels -- in that order), or from a directory holding them."""
    if isinstance(paths, (str, os.PathLike)):
        folder = Path(paths)
        found = _find_set(folder, _LAYOUT["fashion_mnist"][1])
        if found is None:
            raise DataNotFound(f"{folder.resolve()}: expected {_WHAT_TO_PUT['fashion_mnist']}")
        paths = found
    paths = [Path(p).resolve() for p in paths]
    if len(paths) != 4:
        raise ValueError(f"load_fashion_mnist needs 4 files, got {len(paths)}")
    x_train, y_train = _images_and_labels(paths[0], paths[1])
    x_test, y_test = _images_and_labels(paths[2], paths[3])
    return Dataset(name="fashion_mnist", x=x_train, y=y_train,
                   class_names=list(FASHION_CLASSES), feature_names=None,
                   source=os.pathsep.join(str(p) for p in paths),
                   sha256=_files_sha256(paths), synthetic=False,
                   x_test=x_test, y_test=y_test)


def _images_and_labels(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    x = load_idx_images(images_path)
    y = load_idx_labels(labels_path)
    if len(x) != len(y):
        raise DataFormatError(f"{images_path} holds {len(x)} images but {labels_path} "
                              f"holds {len(y)} labels")
    _check_labels(labels_path, y, 10)
    return x[..., np.newaxis], y


def _check_labels(path: Path, y: np.ndarray, n_classes: int) -> None:
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(f"{path}: label {int(y[i])} at index {i} is outside "
                              f"0..{n_classes - 1}")


# --------------------------------------------------------------------------- MNIST npz


def load_mnist_npz(path: str | os.PathLike) -> Dataset:
    """MNIST from a ``.npz`` in the keras layout (x_train, y_train, x_test, y_test)."""
    path = Path(path).resolve()
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFormatError(f"{path}: a single .npy array, expected a .npz archive "
                                  f"with keys {list(keys)}")
        with loaded as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataFormatError(f"{path}: missing keys {missing}; found {sorted(f.files)}, "
                                      f"expected {list(keys)} (keras.datasets.mnist layout)")
            arrays = {k: f[k] for k in keys}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not a readable .npz archive ({e})") from None

    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 4 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 3 or x.dtype != np.uint8:
            raise DataFormatError(f"{path}: x_{split} has shape {x.shape} dtype {x.dtype}, "
                                  f"expected (n, H, W) uint8")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataFormatError(f"{path}: y_{split} has shape {y.shape} dtype {y.dtype}, "
                                  f"expected (n,) integers")
        if len(x) != len(y):
            raise DataFormatError(f"{path}: x_{split} has {len(x)} images but y_{split} "
                                  f"has {len(y)} labels")
        y = y.astype(np.int64)
        _check_labels(path, y, 10)
        out[split] = (x[..., np.newaxis], y)
    return Dataset(name="mnist", x=out["train"][0], y=out["train"][1],
                   class_names=list(DIGIT_CLASSES), feature_names=None, source=str(path),
                   sha256=file_sha256(path), synthetic=False,
                   x_test=out["test"][0], y_test=out["test"][1])


# --------------------------------------------------------------------------- digits


def load_digits() -> Dataset:
    """sklearn's bundled 8x8 digits (1,797 images), 0..16 rescaled to 0..255 uint8."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., np.newaxis]
    y = bunch.target.astype(np.int64)
    return Dataset(name="digits", x=x, y=y, class_names=list(DIGIT_CLASSES),
                   feature_names=None, source="sklearn.datasets.load_digits",
                   sha256=_arrays_sha256(x, y), synthetic=False)


# --------------------------------------------------------------------------- synthetic


def synthetic_transactions(n: int = 284_807, fraud_rate: float = 0.0017,
                           seed: int = 0) -> Dataset:
    """Synthetic card transactions with the real schema, for scale tests only.

    ``round(n * fraud_rate)`` frauds (at least one when ``n >= 2``), rows in time order.
    Time is uniform over the real set's two days (0..172792 s); Amount is log-normal
    (median about 20, like the real set; frauds slightly lower and more spread);
    V1..V28 are N(0, 1) for legit rows, and for frauds N(shift, 1.5^2) with a fixed,
    seed-independent shift on about half the components.  Flagged ``synthetic=True``.
    """
    if n < 2:
        raise ValueError(f"synthetic_transactions needs n >= 2, got {n}")
    if not 0.0 < fraud_rate < 1.0:
        raise ValueError(f"fraud_rate must be in (0, 1), got {fraud_rate}")
    rng = np.random.default_rng(seed)
    n_fraud = int(min(n - 1, max(1, round(n * fraud_rate))))
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, size=n_fraud, replace=False)] = 1
    fraud = y == 1

    time_s = np.sort(rng.uniform(0.0, 172_792.0, size=n)).round()
    amount = np.where(fraud, rng.lognormal(2.6, 1.8, size=n), rng.lognormal(3.0, 1.4, size=n))
    amount = np.minimum(amount, 25_691.16).round(2)
    shift = np.zeros(28)
    strong = {1: -2.0, 2: 2.0, 3: -3.5, 4: 3.0, 7: -3.0, 9: -2.0, 10: -4.0, 11: 3.0,
              12: -4.5, 14: -5.0, 16: -3.0, 17: -4.0, 18: -1.5, 19: 0.8, 21: 0.5}
    for k, v in strong.items():
        shift[k - 1] = v
    v = rng.standard_normal((n, 28))
    v[fraud] = v[fraud] * 1.5 + shift
    x = np.column_stack([time_s, v, amount]).astype(np.float32)
    return Dataset(name=SYNTHETIC_CREDITCARD, x=x, y=y, class_names=list(CREDITCARD_CLASSES),
                   feature_names=list(CREDITCARD_FEATURES), source="synthetic",
                   sha256=_arrays_sha256(x, y), synthetic=True)


# --------------------------------------------------------------------------- locating files


def _find_set(folder: Path, alternatives: tuple[tuple[str, ...], ...]) -> list[Path] | None:
    for names in alternatives:
        paths = [folder / n for n in names]
        if all(p.is_file() for p in paths):
            return [p.resolve() for p in paths]
    return None


def _find_in_dir(name: str, directory: Path) -> list[Path] | None:
    folder, alternatives = _LAYOUT[name]
    for d in (directory / folder, directory):
        found = _find_set(d, alternatives)
        if found is not None:
            return found
    return None


def cache_dir() -> Path:
    """Where official downloads go (and are found again): ``$LAYERSCOPE_CACHE_DIR``,
    default ``~/.cache/layerscope/datasets``."""
    env = os.environ.get(ENV_CACHE_DIR)
    return Path(env) if env else Path.home() / ".cache" / "layerscope" / "datasets"


def offline_forced() -> bool:
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def network_available(url: str, timeout: float = NETWORK_PROBE_SECONDS) -> tuple[bool, str]:
    """(reachable, reason) for the host of ``url``.  Never blocks longer than ``timeout``
    (name resolution included: the probe runs in a daemon thread)."""
    if offline_forced():
        return False, f"{ENV_OFFLINE} is set"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: dict[str, object] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=probe, name="layerscope-net-probe", daemon=True)
    t.start()
    t.join(timeout)
    if result.get("ok"):
        return True, ""
    if "error" in result:
        return False, f"cannot connect to {host}:{port} ({result['error']})"
    return False, f"no answer from {host}:{port} within {timeout:g} s"


def _download_urls(name: str) -> list[tuple[str, str, str, str]]:
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    out = []
    for fname, url, algo, digest in DOWNLOADS.get(name, []):
        if mirror:
            url = mirror.rstrip("/") + "/" + fname
        out.append((fname, url, algo, digest))
    return out


def _download(name: str, dest_dir: Path) -> list[Path]:
    """Fetch every file of ``name`` into ``dest_dir``.  Each file is written to a hidden
    temporary name, checked against its published checksum, then renamed into place, so
    the cache only ever holds complete, verified files."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    for fname, url, algo, digest in _download_urls(name):
        dest = dest_dir / fname
        if dest.is_file() and _file_digest(dest, algo) == digest:
            done.append(dest.resolve())
            continue
        part = dest_dir / f".{fname}.part-{uuid.uuid4().hex}"
        log.info("downloading %s from %s", fname, url)
        started = time.monotonic()
        try:
            h = hashlib.new(algo)
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as r, \
                    open(part, "wb") as out:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != digest:
                raise DataFormatError(f"{url}: {algo} {h.hexdigest()} does not match the "
                                      f"published {digest}; download discarded")
            os.replace(part, dest)
        finally:
            part.unlink(missing_ok=True)
        log.info("downloaded %s (%.1f s)", dest, time.monotonic() - started)
        done.append(dest.resolve())
    return done


def locate(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The file(s) of data set ``name``, searched in the order described in the module
    docstring.  Several files come back in a fixed order (Fashion-MNIST: train images,
    train labels, test images, test labels).  ``digits`` returns sklearn's bundled file,
    ``synthetic_creditcard`` nothing.  Raises :class:`DataNotFound`."""
    _check_name(name)
    if name == SYNTHETIC_CREDITCARD:
        return []
    if name == "digits":
        import sklearn.datasets

        bundled = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"
        return [bundled] if bundled.is_file() else []

    looked: list[str] = []
    if data_dir is not None:
        base: Path | None = Path(data_dir)
        origin = "data_dir argument"
    elif os.environ.get(ENV_DATA_DIR):
        base = Path(os.environ[ENV_DATA_DIR])
        origin = f"${ENV_DATA_DIR}"
    else:
        base, origin = None, ""
    folder = _LAYOUT[name][0]
    if base is not None:
        found = _find_in_dir(name, base)
        if found:
            return found
        note = "" if base.is_dir() else " (does not exist)"
        looked.append(f"{base.resolve() / folder}/ and {base.resolve()}/ ({origin}){note}")
    else:
        looked.append(f"${ENV_DATA_DIR} (not set)")

    if name == "fashion_mnist":
        found = _find_set(DEBIAN_FASHION_DIR, _LAYOUT[name][1])
        if found:
            return found
        looked.append(f"{DEBIAN_FASHION_DIR}/ (Debian package dataset-fashion-mnist)")

    cache = cache_dir()
    found = _find_in_dir(name, cache)
    if found:
        return found
    looked.append(f"{cache / folder}/ (download cache, ${ENV_CACHE_DIR})")

    urls = _download_urls(name)
    if urls:
        ok, why = network_available(urls[0][1])
        if ok:
            return _download(name, cache / folder)
        download_note = f"official download not attempted: {why}"
    else:
        download_note = ("no unauthenticated official download exists; get it from "
                         "https://www.kaggle.com/datasets/mlg-ulb/creditcardfraud")

    where = (f"{base.resolve() / folder}/" if base is not None
             else f"${ENV_DATA_DIR}/{folder}/ (and set {ENV_DATA_DIR}, e.g. to ../shared/datasets)")
    extra = (" or install the Debian package dataset-fashion-mnist"
             if name == "fashion_mnist" else "")
    raise DataNotFound(f"{name}: data not found. Put {_WHAT_TO_PUT[name]} in {where}{extra}. "
                       f"Looked in: {'; '.join(looked)}; {download_note}.")


# --------------------------------------------------------------------------- load_dataset


def _check_name(name: str) -> None:
    if name not in DATASETS and name != SYNTHETIC_CREDITCARD:
        raise ValueError(f"unknown data set {name!r}; allowed: "
                         f"{', '.join(DATASETS + (SYNTHETIC_CREDITCARD,))}")


def stratified_subset(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset of at most ``k`` rows, class shares kept
    (largest remainder), with every class present when ``k`` >= the number of classes."""
    n = len(y)
    if k >= n:
        return np.arange(n)
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = k * counts / n
    alloc = np.minimum(np.floor(quota).astype(np.int64), counts)
    if k >= len(classes):
        alloc = np.maximum(alloc, 1)
    while alloc.sum() > k:           # the minimum of one overshot: take from the most over quota
        cand = np.flatnonzero(alloc > 1)
        alloc[cand[np.argmax((alloc - quota)[cand])]] -= 1
    while alloc.sum() < k:           # hand out the rest by largest remainder
        cand = np.flatnonzero(alloc < counts)
        alloc[cand[np.argmax((quota - alloc)[cand])]] += 1
    chosen = [rng.choice(np.flatnonzero(inverse == j), size=int(a), replace=False)
              for j, a in enumerate(alloc) if a > 0]
    return np.sort(np.concatenate(chosen))


def subset(ds: Dataset, limit: int, seed: int = 0) -> Dataset:
    """``ds`` cut to a stratified random subset of at most ``limit`` rows (``seed``);
    the official test split, if any, is cut by the same fraction.  Same source/sha256."""
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    n_classes = len(np.unique(ds.y))
    if limit < n_classes:
        raise ValueError(f"limit={limit} is below the number of classes ({n_classes}) "
                         f"of {ds.name}; a stratified subset needs at least one row per class")
    if limit >= len(ds.y):
        return ds
    rng = np.random.default_rng(seed)
    idx = stratified_subset(ds.y, int(limit), rng)
    x_test = y_test = None
    if ds.x_test is not None:
        k_test = max(1, round(len(ds.y_test) * limit / len(ds.y)))
        tidx = stratified_subset(ds.y_test, k_test, rng)
        x_test, y_test = ds.x_test[tidx], ds.y_test[tidx]
    return Dataset(name=ds.name, x=ds.x[idx], y=ds.y[idx], class_names=ds.class_names,
                   feature_names=ds.feature_names, source=ds.source, sha256=ds.sha256,
                   synthetic=ds.synthetic, x_test=x_test, y_test=y_test)


def load_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                 limit: int | None = None, seed: int = 0) -> Dataset:
    """Locate and load data set ``name`` (one of :data:`DATASETS`, or
    ``"synthetic_creditcard"``).  ``limit``: a stratified random subset of at most
    ``limit`` training rows (``seed``), the official test split cut by the same fraction.
    ``sha256`` always identifies the source file(s), not the subset."""
    _check_name(name)
    if name == SYNTHETIC_CREDITCARD:
        ds = synthetic_transactions(seed=seed)
    elif name == "digits":
        ds = load_digits()
    else:
        paths = locate(name, data_dir)
        if name == "creditcard":
            ds = load_creditcard_csv(paths[0])
        elif name == "mnist":
            ds = load_mnist_npz(paths[0])
        else:
            ds = load_fashion_mnist(paths)
    return ds if limit is None else subset(ds, limit, seed)


def prepare(names: Sequence[str] = DATASETS,
            data_dir: str | os.PathLike | None = None) -> list[dict]:
    """The ``data`` step: locate (downloading if needed and possible), load and checksum
    each data set.  Returns one summary row per name: name, kind, source, rows (training
    pool), test_rows (official test split, 0 if none), sha256, synthetic, seconds.

    Every name is tried; if any is missing a single :class:`DataNotFound` lists them all
    (its ``rows`` attribute holds the summaries of those that loaded)."""
    for name in names:
        _check_name(name)
    rows: list[dict] = []
    missing: list[str] = []
    for name in names:
        started = time.perf_counter()
        try:
            ds = load_dataset(name, data_dir=data_dir)
        except DataNotFound as e:
            missing.append(str(e))
            continue
        rows.append({
            "name": ds.name,
            "kind": ds.kind,
            "source": ds.source,
            "rows": int(len(ds.y)),
            "test_rows": 0 if ds.y_test is None else int(len(ds.y_test)),
            "sha256": ds.sha256,
            "synthetic": bool(ds.synthetic),
            "seconds": round(time.perf_counter() - started, 3),
        })
    if missing:
        err = DataNotFound("\n".join(missing))
        err.rows = rows  # type: ignore[attr-defined]
        raise err
    return rows


_apply_limit = subset   # earlier private name, kept for callers that picked it up
