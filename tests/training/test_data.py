"""Data loaders, locate() search order, the data step, synthetic data and subsets."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.data import (
    CREDITCARD_COLUMNS,
    DataFormatError,
    DataNotFound,
    Dataset,
)

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LAYERSCOPE_DATA_DIR") or ROOT.parent / "shared" / "datasets")
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data sets at {SHARED}")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test sees the developer's data dir, download cache or network."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv(data.ENV_MIRROR, raising=False)
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "no-debian-package")


# --------------------------------------------------------------------------- file writers


def card_rows(n_legit=6, n_fraud=2, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_legit + n_fraud):
        values = [float(i * 10)] + rng.standard_normal(28).round(6).tolist() + [round(12.5 + i, 2)]
        rows.append(values + [1 if i >= n_legit else 0])
    return rows


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_idx(path: Path, magic: int, dims, payload: bytes, gz=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_fashion(folder: Path, n_train=12, n_test=5, h=4, w=3) -> list[Path]:
    rng = np.random.default_rng(1)
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        out.append(write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051, (n, h, w),
                             images.tobytes()))
        out.append(write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049, (n,),
                             labels.tobytes()))
    return out


def write_npz(path: Path, n_train=20, n_test=10, **override) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    arrays = {
        "x_train": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- credit card CSV


def test_creditcard_csv_loads(tmp_path):
    path = write_csv(tmp_path / "card.csv", CREDITCARD_COLUMNS, card_rows(6, 2))
    ds = data.load_creditcard_csv(path)
    assert ds.name == "creditcard" and ds.kind == "tabular"
    assert ds.x.shape == (8, 30) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [0] * 6 + [1] * 2
    assert ds.feature_names == ["Time"] + [f"V{i}" for i in range(1, 29)] + ["Amount"]
    assert ds.class_names == ["legit", "fraud"]
    assert ds.source == str(path.resolve()) and Path(ds.source).is_absolute()
    assert ds.sha256 == sha256(path)
    assert ds.synthetic is False and ds.x_test is None and ds.y_test is None
    assert ds.x[3, 0] == 30.0 and ds.x[3, 29] == pytest.approx(15.5)


def test_creditcard_csv_quoted_header_and_any_column_order(tmp_path):
    """The Kaggle file quotes every header and the Class value; columns may be reordered."""
    rows = card_rows(3, 1)
    order = [CREDITCARD_COLUMNS.index(c) for c in ["Class", "Amount"] + CREDITCARD_COLUMNS[:-2]]
    header = [CREDITCARD_COLUMNS[i] for i in order]
    shuffled = [[r[i] for i in order] for r in rows]
    reference = data.load_creditcard_csv(write_csv(tmp_path / "a.csv", CREDITCARD_COLUMNS, rows))
    path = tmp_path / "b.csv"
    path.write_text("\n".join([",".join(f'"{h}"' for h in header)]
                              + [",".join(f'"{v}"' if j == 0 else str(v) for j, v in enumerate(r))
                                 for r in shuffled]) + "\n")
    ds = data.load_creditcard_csv(path)
    np.testing.assert_array_equal(ds.x, reference.x)
    np.testing.assert_array_equal(ds.y, reference.y)


def test_creditcard_csv_wrong_header_names_missing_and_extra(tmp_path):
    header = [c if c != "V3" else "Foo" for c in CREDITCARD_COLUMNS]
    path = write_csv(tmp_path / "bad.csv", header, card_rows())
    with pytest.raises(DataFormatError) as e:
        data.load_creditcard_csv(path)
    msg = str(e.value)
    assert str(path.resolve()) in msg
    assert "missing columns ['V3']" in msg and "unexpected columns ['Foo']" in msg


def test_creditcard_csv_duplicate_column(tmp_path):
    rows = [r + [0.0] for r in card_rows()]
    path = write_csv(tmp_path / "dup.csv", CREDITCARD_COLUMNS + ["V1"], rows)
    with pytest.raises(DataFormatError, match=r"duplicated columns \['V1'\]"):
        data.load_creditcard_csv(path)


@pytest.mark.parametrize("cell, expected", [
    ("abc", r"line 4, column 'V5': 'abc' is not a number"),
    ("", r"line 4, column 'V5': '' is not a number"),
    ("nan", r"line 4, column 'V5': value nan is not a finite number"),
])
def test_creditcard_csv_bad_cell_names_line_and_column(tmp_path, cell, expected):
    rows = card_rows()
    rows[2][CREDITCARD_COLUMNS.index("V5")] = cell      # data row 3 = line 4
    path = write_csv(tmp_path / "bad.csv", CREDITCARD_COLUMNS, rows)
    with pytest.raises(DataFormatError, match=expected):
        data.load_creditcard_csv(path)


def test_creditcard_csv_blank_lines_are_skipped_and_lines_counted(tmp_path):
    rows = card_rows()
    rows[4][-1] = 2
    path = write_csv(tmp_path / "blank.csv", CREDITCARD_COLUMNS, rows)
    text = path.read_text().split("\n")
    path.write_text("\n".join(text[:2] + [""] + text[2:]) + "\n")   # blank line 3
    with pytest.raises(DataFormatError, match=r"line 7, column 'Class': 2 is not a class label"):
        data.load_creditcard_csv(path)
    rows[4][-1] = 0
    path = write_csv(tmp_path / "ok.csv", CREDITCARD_COLUMNS, rows)
    path.write_text(path.read_text() + "\n\n")
    assert data.load_creditcard_csv(path).x.shape == (8, 30)


def test_creditcard_csv_short_row(tmp_path):
    rows = card_rows()
    rows[1] = rows[1][:-1]
    path = write_csv(tmp_path / "short.csv", CREDITCARD_COLUMNS, rows)
    with pytest.raises(DataFormatError, match=r"line 3 has 30 cells, expected 31"):
        data.load_creditcard_csv(path)


def test_creditcard_csv_class_must_be_0_or_1(tmp_path):
    rows = card_rows()
    rows[4][-1] = 2
    path = write_csv(tmp_path / "cls.csv", CREDITCARD_COLUMNS, rows)
    with pytest.raises(DataFormatError, match=r"line 6, column 'Class': 2 is not a class label"):
        data.load_creditcard_csv(path)


@pytest.mark.parametrize("content, expected", [
    ("", "the file is empty"),
    (",".join(CREDITCARD_COLUMNS) + "\n", "no data rows"),
])
def test_creditcard_csv_empty(tmp_path, content, expected):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=expected):
        data.load_creditcard_csv(path)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_images_and_labels(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    ip = write_idx(tmp_path / "img", 2051, (2, 3, 4), images.tobytes(), gz=gz)
    lp = write_idx(tmp_path / "lab", 2049, (2,), bytes([7, 3]), gz=gz)
    x = data.load_idx_images(ip)
    np.testing.assert_array_equal(x, images)
    assert x.dtype == np.uint8 and x.flags.writeable
    y = data.load_idx_labels(lp)
    assert y.tolist() == [7, 3] and y.dtype == np.int64


def test_idx_wrong_magic(tmp_path):
    lp = write_idx(tmp_path / "labels.gz", 2049, (2,), bytes([1, 2]))
    with pytest.raises(DataFormatError, match=r"IDX magic number 2049 \(0x00000801\) \(that is an "
                                              r"IDX labels file\), expected 2051"):
        data.load_idx_images(lp)
    junk = write_idx(tmp_path / "junk.gz", 0x12345678, (), b"")
    with pytest.raises(DataFormatError, match=r"IDX magic number 305419896 .*expected 2049"):
        data.load_idx_labels(junk)


def test_idx_truncated_data(tmp_path):
    path = write_idx(tmp_path / "img.gz", 2051, (5, 2, 2), bytes(3 * 4))
    with pytest.raises(DataFormatError, match=r"truncated: dimensions \[5, 2, 2\] need 20 data "
                                              r"bytes, found 12"):
        data.load_idx_images(path)


def test_idx_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "lab", 2049, (2,), bytes(3), gz=False)
    with pytest.raises(DataFormatError, match="trailing bytes"):
        data.load_idx_labels(path)


def test_idx_truncated_gzip_stream(tmp_path):
    full = write_idx(tmp_path / "img.gz", 2051, (50, 8, 8), bytes(range(256)) * 12 + bytes(128))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(full.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match=r"cut.gz: corrupt or truncated gzip data"):
        data.load_idx_images(cut)


def test_idx_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(struct.pack(">I", 2051) + b"\x00\x00")
    with pytest.raises(DataFormatError, match="truncated IDX header"):
        data.load_idx_images(path)


def test_fashion_from_idx_files(tmp_path):
    paths = write_fashion(tmp_path / "fm", n_train=12, n_test=5)
    ds = data.load_fashion_mnist(tmp_path / "fm")
    assert ds.name == "fashion_mnist" and ds.kind == "image"
    assert ds.x.shape == (12, 4, 3, 1) and ds.x.dtype == np.uint8
    assert ds.x_test.shape == (5, 4, 3, 1) and ds.y_test.tolist() == [0, 1, 2, 3, 4]
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert ds.feature_names is None and ds.synthetic is False
    lines = sorted(f"{p.name}:{sha256(p)}\n" for p in paths)
    assert ds.sha256 == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert ds.source.split(os.pathsep) == [str(p.resolve()) for p in
                                           (paths[0], paths[1], paths[2], paths[3])]


def test_fashion_count_mismatch(tmp_path):
    paths = write_fashion(tmp_path / "fm", n_train=12)
    write_idx(paths[1], 2049, (11,), bytes(11))
    with pytest.raises(DataFormatError, match="holds 12 images but .* holds 11 labels"):
        data.load_fashion_mnist(paths)


def test_fashion_label_out_of_range(tmp_path):
    paths = write_fashion(tmp_path / "fm", n_train=12)
    write_idx(paths[1], 2049, (12,), bytes([0] * 11 + [10]))
    with pytest.raises(DataFormatError, match=r"label 10 at index 11 is outside 0..9"):
        data.load_fashion_mnist(paths)


# --------------------------------------------------------------------------- MNIST npz


def test_mnist_npz_loads(tmp_path):
    path = write_npz(tmp_path / "mnist.npz")
    ds = data.load_mnist_npz(path)
    assert ds.x.shape == (20, 28, 28, 1) and ds.x.dtype == np.uint8
    assert ds.x_test.shape == (10, 28, 28, 1) and ds.y_test.dtype == np.int64
    assert ds.class_names == [str(i) for i in range(10)]
    assert ds.sha256 == sha256(path) and ds.synthetic is False and ds.kind == "image"


@pytest.mark.parametrize("override, expected", [
    ({"y_test": None}, r"missing keys \['y_test'\]"),
    ({"x_train": np.zeros((20, 28, 28), np.float32)},
     r"x_train has shape \(20, 28, 28\) dtype float32"),
    ({"y_train": np.zeros(19, np.uint8)}, "x_train has 20 images but y_train has 19 labels"),
    ({"y_test": np.full(10, 12, np.uint8)}, r"label 12 at index 0 is outside 0..9"),
])
def test_mnist_npz_bad(tmp_path, override, expected):
    path = write_npz(tmp_path / "mnist.npz", **override)
    with pytest.raises(DataFormatError, match=expected):
        data.load_mnist_npz(path)


def test_mnist_npz_single_array(tmp_path):
    path = tmp_path / "mnist.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(DataFormatError, match="a single .npy array, expected a .npz archive"):
        data.load_mnist_npz(path)


def test_mnist_npz_not_a_zip(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataFormatError, match="not a readable .npz archive"):
        data.load_mnist_npz(path)


# --------------------------------------------------------------------------- digits, synthetic


def test_digits():
    ds = data.load_dataset("digits")
    assert ds.x.shape == (1797, 8, 8, 1) and ds.x.dtype == np.uint8
    assert ds.x.min() == 0 and ds.x.max() == 255
    assert sorted(np.unique(ds.y).tolist()) == list(range(10))
    assert ds.source == "sklearn.datasets.load_digits" and ds.synthetic is False
    assert ds.sha256 == hashlib.sha256(ds.x.tobytes() + ds.y.tobytes()).hexdigest()
    assert data.locate("digits")  # sklearn's bundled file


def test_synthetic_transactions():
    ds = data.synthetic_transactions(n=20_000, fraud_rate=0.0017, seed=3)
    assert ds.name == "synthetic_creditcard" and ds.synthetic is True and ds.source == "synthetic"
    assert ds.x.shape == (20_000, 30) and ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.feature_names == data.CREDITCARD_FEATURES and ds.class_names == ["legit", "fraud"]
    assert int(ds.y.sum()) == 34
    time_s, amount = ds.x[:, 0], ds.x[:, -1]
    assert time_s.min() >= 0 and time_s.max() <= 172_792 and np.all(np.diff(time_s) >= 0)
    assert amount.min() >= 0 and 5 < np.median(amount) < 60
    v = ds.x[:, 1:29]
    assert abs(v[ds.y == 0].mean()) < 0.05 and abs(v[ds.y == 0].std() - 1) < 0.05
    assert v[ds.y == 1, 13].mean() < -3          # V14 shifted for frauds
    assert ds.sha256 == hashlib.sha256(ds.x.tobytes() + ds.y.tobytes()).hexdigest()
    again = data.synthetic_transactions(n=20_000, fraud_rate=0.0017, seed=3)
    assert again.sha256 == ds.sha256
    assert data.synthetic_transactions(n=20_000, seed=4).sha256 != ds.sha256


def test_synthetic_full_scale_by_name():
    ds = data.load_dataset("synthetic_creditcard")
    assert ds.x.shape == (284_807, 30) and ds.synthetic is True
    assert ds.y.mean() == pytest.approx(0.0017, abs=0.0001)


# --------------------------------------------------------------------------- subsets


def test_stratified_subset_keeps_shares_and_every_class():
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    rng = np.random.default_rng(0)
    idx = data.stratified_subset(y, 100, rng)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx]).tolist() == [90, 9, 1]
    rare = np.array([0] * 999 + [1])
    assert np.bincount(rare[data.stratified_subset(rare, 10, rng)]).tolist() == [9, 1]
    assert data.stratified_subset(y, 5000, rng).tolist() == list(range(1000))


def test_limit_on_creditcard_keeps_both_classes(tmp_path):
    path = write_csv(tmp_path / "creditcard" / "creditcard_sample.csv", CREDITCARD_COLUMNS,
                     card_rows(180, 20))
    full = data.load_dataset("creditcard", data_dir=tmp_path)
    ds = data.load_dataset("creditcard", data_dir=tmp_path, limit=30, seed=1)
    assert ds.x.shape == (30, 30) and np.bincount(ds.y).tolist() == [27, 3]
    assert ds.sha256 == full.sha256 == sha256(path)     # identifies the source file
    same = data.load_dataset("creditcard", data_dir=tmp_path, limit=30, seed=1)
    np.testing.assert_array_equal(same.x, ds.x)
    other = data.load_dataset("creditcard", data_dir=tmp_path, limit=30, seed=2)
    assert not np.array_equal(other.x, ds.x)


def test_limit_on_synthetic_keeps_the_rare_class():
    ds = data.subset(data.synthetic_transactions(n=50_000, seed=0), 500, seed=0)
    assert len(ds.y) == 500 and ds.y.sum() >= 1 and ds.synthetic is True


def test_limit_scales_the_test_split(tmp_path):
    write_npz(tmp_path / "mnist" / "mnist.npz", n_train=200, n_test=100)
    ds = data.load_dataset("mnist", data_dir=tmp_path, limit=50)
    assert ds.x.shape == (50, 28, 28, 1) and ds.x_test.shape == (25, 28, 28, 1)
    assert set(ds.y.tolist()) == set(range(10)) and set(ds.y_test.tolist()) == set(range(10))


@pytest.mark.parametrize("limit", [0, -3, 1, 2.5, True])
def test_limit_invalid(tmp_path, limit):
    write_csv(tmp_path / "creditcard.csv", CREDITCARD_COLUMNS, card_rows())
    with pytest.raises(ValueError, match="limit"):
        data.load_dataset("creditcard", data_dir=tmp_path, limit=limit)


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown data set 'cifar10'; allowed: creditcard, "
                                         r"fashion_mnist, mnist, digits, synthetic_creditcard"):
        data.load_dataset("cifar10")


# --------------------------------------------------------------------------- locate


def test_locate_env_var_dir(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "env" / "creditcard" / "creditcard_sample.csv", CREDITCARD_COLUMNS,
                     card_rows())
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.locate("creditcard") == [path.resolve()]
    ds = data.load_dataset("creditcard")
    assert ds.source == str(path.resolve()) and ds.synthetic is False


def test_locate_argument_wins_over_env_var(tmp_path, monkeypatch):
    write_csv(tmp_path / "env" / "creditcard" / "creditcard_sample.csv", CREDITCARD_COLUMNS,
              card_rows())
    arg = write_csv(tmp_path / "arg" / "creditcard.csv", CREDITCARD_COLUMNS, card_rows())
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.locate("creditcard", tmp_path / "arg") == [arg.resolve()]  # directly in the dir


def test_locate_prefers_the_full_card_file(tmp_path):
    write_csv(tmp_path / "creditcard" / "creditcard_sample.csv", CREDITCARD_COLUMNS, card_rows())
    full = write_csv(tmp_path / "creditcard" / "creditcard.csv", CREDITCARD_COLUMNS, card_rows())
    assert data.locate("creditcard", tmp_path) == [full.resolve()]


def test_locate_env_dir_wins_over_debian_and_cache(tmp_path, monkeypatch):
    env_files = write_fashion(tmp_path / "env" / "fashion-mnist")
    write_fashion(tmp_path / "debian")
    write_fashion(tmp_path / "cache" / "fashion-mnist")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "debian")
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.locate("fashion_mnist") == [p.resolve() for p in env_files]


def test_locate_debian_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "empty"))
    cache_files = write_fashion(tmp_path / "cache" / "fashion-mnist")
    assert data.locate("fashion_mnist") == [p.resolve() for p in cache_files]
    debian_files = write_fashion(tmp_path / "debian")
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "debian")
    assert data.locate("fashion_mnist") == [p.resolve() for p in debian_files]


def test_locate_incomplete_fashion_set_is_not_found(tmp_path):
    files = write_fashion(tmp_path / "fashion-mnist")
    files[3].unlink()
    with pytest.raises(DataNotFound, match="t10k-labels-idx1-ubyte.gz"):
        data.locate("fashion_mnist", tmp_path)


def test_missing_card_data_says_which_file_where(tmp_path):
    with pytest.raises(DataNotFound) as e:
        data.locate("creditcard", tmp_path / "data")
    msg = str(e.value)
    assert "creditcard_sample.csv" in msg and "Time,V1..V28,Amount,Class" in msg
    assert f"in {(tmp_path / 'data').resolve() / 'creditcard'}/" in msg
    assert "does not exist" in msg and "kaggle" in msg.lower()


def test_missing_mnist_offline(tmp_path):
    (tmp_path / "data").mkdir()
    started = time.monotonic()
    with pytest.raises(DataNotFound) as e:
        data.load_dataset("mnist", data_dir=tmp_path / "data")
    assert time.monotonic() - started < 1.0
    msg = str(e.value)
    assert "mnist.npz" in msg and f"{(tmp_path / 'data' / 'mnist').resolve()}/" in msg
    assert "official download not attempted: LAYERSCOPE_OFFLINE is set" in msg
    assert "does not exist" not in msg


def test_missing_fashion_without_data_dir_mentions_env_var_and_debian():
    with pytest.raises(DataNotFound) as e:
        data.locate("fashion_mnist")
    msg = str(e.value)
    assert "$LAYERSCOPE_DATA_DIR/fashion-mnist/" in msg and "(not set)" in msg
    for name in data.FASHION_FILES:
        assert name in msg
    assert "dataset-fashion-mnist" in msg


def test_synthetic_is_never_a_fallback(tmp_path):
    with pytest.raises(DataNotFound):
        data.load_dataset("creditcard", data_dir=tmp_path)


def test_network_probe_is_quick_and_honours_offline(monkeypatch):
    ok, why = data.network_available("https://example.invalid/x")
    assert not ok and "LAYERSCOPE_OFFLINE" in why
    monkeypatch.delenv(data.ENV_OFFLINE)
    with socket.socket() as s:       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    ok, why = data.network_available(f"http://127.0.0.1:{port}/x", timeout=0.5)
    assert not ok and f"127.0.0.1:{port}" in why
    assert time.monotonic() - started < 1.5


# ------------------------------------------------------------------------ download (local mirror)


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp_path/'mirror', set as the download mirror."""
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv(data.ENV_OFFLINE)
    monkeypatch.setenv(data.ENV_MIRROR, f"http://127.0.0.1:{server.server_address[1]}/")
    yield root
    server.shutdown()
    server.server_close()


def test_download_when_network_is_there(tmp_path, mirror, monkeypatch):
    served = write_npz(mirror / "mnist.npz")
    monkeypatch.setitem(data.DOWNLOADS, "mnist",
                        [("mnist.npz", "unused://", "sha256", sha256(served))])
    paths = data.locate("mnist", tmp_path / "empty")
    assert paths == [(tmp_path / "cache" / "mnist" / "mnist.npz").resolve()]
    assert sha256(paths[0]) == sha256(served)
    served.unlink()                          # found in the cache from now on
    monkeypatch.setenv(data.ENV_OFFLINE, "1")
    assert data.load_dataset("mnist", data_dir=tmp_path / "empty").x.shape == (20, 28, 28, 1)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, mirror, monkeypatch):
    write_npz(mirror / "mnist.npz")
    monkeypatch.setitem(data.DOWNLOADS, "mnist",
                        [("mnist.npz", "unused://", "sha256", "0" * 64)])
    with pytest.raises(DataFormatError, match="does not match the published"):
        data.locate("mnist")
    cache = tmp_path / "cache" / "mnist"
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- prepare


def test_prepare_summarises_each(tmp_path):
    card = write_csv(tmp_path / "creditcard" / "creditcard_sample.csv", CREDITCARD_COLUMNS,
                     card_rows())
    write_npz(tmp_path / "mnist" / "mnist.npz")
    rows = data.prepare(["creditcard", "mnist", "digits"], data_dir=tmp_path)
    assert [r["name"] for r in rows] == ["creditcard", "mnist", "digits"]
    assert rows[0]["source"] == str(card.resolve()) and rows[0]["sha256"] == sha256(card)
    assert rows[0]["rows"] == 8 and rows[0]["test_rows"] == 0 and rows[0]["synthetic"] is False
    assert rows[1]["rows"] == 20 and rows[1]["test_rows"] == 10
    assert rows[2]["rows"] == 1797
    assert all(set(r) >= {"name", "source", "rows", "sha256", "synthetic"} for r in rows)


def test_prepare_reports_every_missing_data_set(tmp_path):
    write_npz(tmp_path / "mnist" / "mnist.npz")
    with pytest.raises(DataNotFound) as e:
        data.prepare(data_dir=tmp_path)
    msg = str(e.value)
    assert "creditcard_sample.csv" in msg and "train-images-idx3-ubyte.gz" in msg
    assert [r["name"] for r in e.value.rows] == ["mnist", "digits"]


def test_dataset_repr_is_short():
    ds = data.synthetic_transactions(n=1000)
    assert len(repr(ds)) < 300 and "synthetic=True" in repr(ds)
    with pytest.raises(ValueError, match="3 inputs but 2 labels"):
        Dataset("x", np.zeros((3, 2), np.float32), np.zeros(2, np.int64), ["a"], None, "s", "h",
                False)


# --------------------------------------------------------------------------- the shared real files


@pytest.fixture(scope="module")
def shared_mnist():
    return data.load_dataset("mnist", data_dir=SHARED)


@pytest.fixture(scope="module")
def shared_fashion():
    return data.load_dataset("fashion_mnist", data_dir=SHARED)


@needs_shared
def test_shared_creditcard():
    ds = data.load_dataset("creditcard", data_dir=SHARED)
    assert ds.x.shape == (3335, 30) and int(ds.y.sum()) == 492
    assert ds.sha256 == "4dcbfc1e64e101424c242544187e0833fc8389d3ded189825292c6b1a0232de5"
    assert ds.synthetic is False
    small = data.subset(ds, 300, seed=0)
    assert len(small.y) == 300 and 40 <= small.y.sum() <= 50     # 14.8 % kept


@needs_shared
def test_shared_mnist(shared_mnist):
    ds = shared_mnist
    assert ds.x.shape == (60_000, 28, 28, 1) and ds.x_test.shape == (10_000, 28, 28, 1)
    assert ds.x.dtype == np.uint8 and ds.x.max() == 255
    assert sorted(np.unique(ds.y).tolist()) == list(range(10))
    assert sorted(np.unique(ds.y_test).tolist()) == list(range(10))
    assert ds.y[0] == 5 and ds.y_test[0] == 7                    # the well-known first labels
    assert ds.sha256 == "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"
    small = data.subset(ds, 600, seed=0)
    assert small.x.shape == (600, 28, 28, 1) and small.x_test.shape == (100, 28, 28, 1)


@needs_shared
def test_shared_fashion(shared_fashion):
    ds = shared_fashion
    assert ds.x.shape == (60_000, 28, 28, 1) and ds.x_test.shape == (10_000, 28, 28, 1)
    assert np.bincount(ds.y).tolist() == [6000] * 10                # balanced classes
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y[0] == 9 and ds.y_test[0] == 9                       # ankle boots
    assert ds.synthetic is False and len(ds.source.split(os.pathsep)) == 4
