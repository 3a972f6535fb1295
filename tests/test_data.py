"""Tests of wakesleep.data. No test reaches the internet: downloads go to a local HTTP server."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from wakesleep import data
from wakesleep.data import DataError, Dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def closed_local_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing"


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    # A download that escapes a test's own server hits a closed local port, never the internet.
    monkeypatch.setenv("WAKESLEEP_BINARIZED_MNIST_URL", closed_local_url())


def real_data_dir() -> Path | None:
    for d in (os.environ.get("WAKESLEEP_DATA_DIR"), "/work/shared/data", SHARED):
        if d and (Path(d) / "binarized_mnist.npz").is_file():
            return Path(d)
    return None


# --------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_binarisation():
    from sklearn.datasets import load_digits

    ds = data.digits()
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (1297, 250, 250)
    assert ds.dim == 64 and ds.image_shape == (8, 8) and ds.binary
    for x in (ds.train, ds.valid, ds.test):
        assert x.dtype == torch.float32 and x.device.type == "cpu"
        assert set(x.unique().tolist()) == {0.0, 1.0}
    # The three splits together are exactly the binarised images (pixel >= 8), each once.
    union = torch.cat([ds.train, ds.valid, ds.test]).numpy()
    expected = (load_digits().data >= 8).astype(np.float32)
    assert np.array_equal(union[np.lexsort(union.T)], expected[np.lexsort(expected.T)])


def test_digits_split_is_fixed_by_seed():
    a, b, c = data.digits(), data.digits(), data.digits(seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


# --------------------------------------------------------------------------- real binarised MNIST


def test_real_binarized_mnist():
    d = real_data_dir()
    if d is None:
        pytest.skip("binarized_mnist.npz not found (set WAKESLEEP_DATA_DIR)")
    ds = data.binarized_mnist(d, download=False)
    assert (ds.train.shape, ds.valid.shape, ds.test.shape) == ((50000, 784), (10000, 784), (10000, 784))
    assert ds.train.dtype == torch.float32 and ds.binary and ds.image_shape == (28, 28)
    means = [x.mean().item() for x in (ds.train, ds.valid, ds.test)]
    assert means == pytest.approx([0.1306, 0.1311, 0.1325], abs=1e-4)


def test_real_mnist_gray():
    d = real_data_dir()
    if d is None or not (d / "mnist_test_gray.npz").is_file():
        pytest.skip("mnist_test_gray.npz not found (set WAKESLEEP_DATA_DIR)")
    ds = data.mnist_gray(d)
    assert [len(x) for x in (ds.train, ds.valid, ds.test)] == [8000, 1000, 1000]
    assert ds.dim == 784 and not ds.binary and ds.image_shape == (28, 28)
    raw = np.load(d / "mnist_test_gray.npz")["data"]
    # File order, scaled by 255.
    assert torch.allclose(ds.train[0], torch.from_numpy(raw[0].reshape(-1) / 255.0).float())
    assert torch.allclose(ds.test[-1], torch.from_numpy(raw[-1].reshape(-1) / 255.0).float())
    assert 0.0 <= ds.train.min() and ds.train.max() <= 1.0


def test_mnist_gray_missing_and_wrong_shape(tmp_path):
    with pytest.raises(DataError, match="mnist_test_gray.npz.*not found"):
        data.mnist_gray(tmp_path)
    np.savez(tmp_path / "mnist_test_gray.npz", data=np.zeros((10, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"shape \(10, 28, 28\)"):
        data.mnist_gray(tmp_path)


# --------------------------------------------------------------------------- download


def fake_amat(n: int, seed: int) -> tuple[np.ndarray, bytes]:
    x = np.random.default_rng(seed).integers(0, 2, size=(n, 784)).astype(np.uint8)
    return x, "".join(" ".join(map(str, row)) + "\n" for row in x).encode()


class FakeServer:
    """A local HTTP server serving in-memory files; records every requested path."""

    def __init__(self, files: dict[str, bytes], truncate: bool = False):
        self.files, self.truncate, self.requests = files, truncate, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.rsplit("/", 1)[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bm"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_files(n=5):
    arrays, files = {}, {}
    for i, s in enumerate(("train", "valid", "test")):
        arrays[s], files[f"binarized_mnist_{s}.amat"] = fake_amat(n + i, seed=i)
    return arrays, files


def test_download_caches_and_second_load_is_offline(tmp_path, monkeypatch):
    arrays, files = fake_files()
    root = tmp_path / "cache"  # does not exist yet: the loader creates it
    with FakeServer(files) as srv:
        monkeypatch.setenv("WAKESLEEP_BINARIZED_MNIST_URL", srv.url)
        ds = data.binarized_mnist(root, expected_rows=None)
        assert sorted(srv.requests) == sorted(f"/bm/{n}" for n in files)
        for s in ("train", "valid", "test"):
            assert torch.equal(getattr(ds, s), torch.from_numpy(arrays[s]).float())
            assert (root / f"binarized_mnist_{s}.amat").read_bytes() == files[f"binarized_mnist_{s}.amat"]
        assert (root / "binarized_mnist.npz").is_file()
        assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp files left

        n_requests = len(srv.requests)
        again = data.binarized_mnist(root, expected_rows=None)
        assert len(srv.requests) == n_requests
        assert torch.equal(again.test, ds.test)
    # The cache alone suffices, without .amat files and without a server.
    for s in ("train", "valid", "test"):
        (root / f"binarized_mnist_{s}.amat").unlink()
    assert torch.equal(data.binarized_mnist(root, download=False, expected_rows=None).valid, ds.valid)


def test_download_404_is_data_error(tmp_path, monkeypatch):
    with FakeServer({}) as srv:
        monkeypatch.setenv("WAKESLEEP_BINARIZED_MNIST_URL", srv.url)
        with pytest.raises(DataError, match=r"could not download .*404.*by hand.*put them in"):
            data.binarized_mnist(tmp_path, expected_rows=None)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_download_refused_connection_is_data_error(tmp_path):
    # The autouse fixture points the base URL at a closed local port.
    with pytest.raises(DataError, match="could not download.*by hand"):
        data.binarized_mnist(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_not_kept(tmp_path, monkeypatch):
    _, files = fake_files()
    with FakeServer(files, truncate=True) as srv:
        monkeypatch.setenv("WAKESLEEP_BINARIZED_MNIST_URL", srv.url)
        with pytest.raises(DataError, match="connection closed after"):
            data.binarized_mnist(tmp_path, expected_rows=None)
    assert list(tmp_path.iterdir()) == []


def test_malformed_download_is_removed(tmp_path, monkeypatch):
    # e.g. a proxy's HTML error page served with status 200
    _, files = fake_files()
    files["binarized_mnist_valid.amat"] = b"<html>blocked</html>\n"
    with FakeServer(files) as srv:
        monkeypatch.setenv("WAKESLEEP_BINARIZED_MNIST_URL", srv.url)
        with pytest.raises(DataError, match="binarized_mnist_valid.amat: malformed"):
            data.binarized_mnist(tmp_path, expected_rows=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binarized_mnist_test.amat", "binarized_mnist_train.amat"]


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*download=True"):
        data.binarized_mnist(tmp_path, download=False)


def test_amat_row_count_checked(tmp_path):
    _, files = fake_files()
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    with pytest.raises(DataError, match="expected 50000 rows, got 5"):
        data.binarized_mnist(tmp_path, download=False)
    assert not (tmp_path / "binarized_mnist.npz").exists()  # a bad parse is not cached


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 1 " * 391 + "0", "malformed .amat"),  # 783 values
        ("0 x " + "0 " * 782, "malformed .amat"),  # not a number
        ("2 " + "0 " * 783, r"not in \{0, 1\}"),
    ],  # not binary
)
def test_bad_amat_line(tmp_path, line, message):
    _, files = fake_files()
    for name, body in files.items():
        (tmp_path / name).write_bytes(body)
    with open(tmp_path / "binarized_mnist_valid.amat", "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=message) as err:
        data.binarized_mnist(tmp_path, download=False, expected_rows=None)
    assert "binarized_mnist_valid.amat" in str(err.value)


def test_corrupt_npz(tmp_path):
    (tmp_path / "binarized_mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=r"binarized_mnist.npz: not a readable .npz.*delete"):
        data.binarized_mnist(tmp_path, download=False)
    (tmp_path / "binarized_mnist.npz").write_bytes(b"plain text")
    with pytest.raises(DataError, match="not a readable .npz"):
        data.binarized_mnist(tmp_path, download=False)


def test_npz_wrong_keys(tmp_path):
    np.savez(tmp_path / "binarized_mnist.npz", train=np.zeros((3, 784), np.uint8))
    with pytest.raises(DataError, match=r"missing key\(s\) \['valid', 'test'\]"):
        data.binarized_mnist(tmp_path, download=False, expected_rows=None)


# --------------------------------------------------------------------------- validate


def ok():
    return np.zeros((4, 3), np.float32)


@pytest.mark.parametrize(
    "x, kw, message",
    [
        (np.zeros((0, 3)), {}, "empty"),
        (np.zeros(3), {}, "2-D array"),
        (np.zeros((2, 2, 2)), {}, "2-D array"),
        (ok(), {"dim": 5}, "expected D=5 .* got 3"),
        (np.array([[0.0, 1.0], [np.nan, np.inf]]), {}, "2 NaN or inf value.*row 1, column 0"),
        (np.array([[0.0, 0.5]]), {"binary": True}, r"1 value\(s\) not in \{0, 1\}.*row 0, column 1.*Bernoulli.*x > 0.5"),
        (np.array([["a", "b"]]), {}, "non-numeric"),
    ],
)
def test_validate_errors(x, kw, message):
    kw = {"binary": False, "dim": None, **kw}
    for arr in (x, torch.as_tensor(x) if x.dtype.kind == "f" else x):
        with pytest.raises(DataError, match=message) as err:
            data.validate(arr, source="somefile.npz", split="valid", **kw)
        assert "somefile.npz" in str(err.value) and "'valid'" in str(err.value)


def test_validate_accepts_good_data():
    data.validate(torch.ones(4, 3), binary=True, dim=3, source="s", split="train")
    data.validate(np.full((4, 3), 0.3), binary=False, dim=None, source="s", split="train")


def test_dataset_checks_consistency():
    x = torch.zeros(4, 6)
    with pytest.raises(DataError, match="differ in width"):
        Dataset("d", x, torch.zeros(2, 5), x, None, True)
    with pytest.raises(DataError, match="float32"):
        Dataset("d", x.double(), x, x, None, True)
    with pytest.raises(DataError, match="image_shape"):
        Dataset("d", x, x, x, (2, 2), True)
    assert Dataset("d", x, x, x, (2, 3), True).dim == 6


# --------------------------------------------------------------------------- user npz


def test_user_npz_with_splits(tmp_path):
    rng = np.random.default_rng(0)
    parts = {s: rng.random((n, 5, 4)).astype(np.float32) for s, n in (("train", 7), ("valid", 3), ("test", 2))}
    np.savez(tmp_path / "mine.npz", **parts)
    ds = data.load_npz(tmp_path / "mine.npz")
    assert ds.name == "mine" and ds.image_shape == (5, 4) and ds.dim == 20 and not ds.binary
    assert torch.equal(ds.valid, torch.from_numpy(parts["valid"].reshape(3, 20)))


def test_user_npz_single_array_split_by_fractions(tmp_path):
    x = np.arange(100 * 6).reshape(100, 6) % 2  # binary, each row unique by its index
    x = np.concatenate([x, np.arange(100)[:, None] % 2], axis=1)
    np.savez(tmp_path / "one.npz", whatever=x)
    ds = data.load_npz(tmp_path / "one.npz", fractions=(0.7, 0.2, 0.1), seed=3)
    assert [len(t) for t in (ds.train, ds.valid, ds.test)] == [70, 20, 10]
    assert ds.binary and ds.image_shape is None and ds.dim == 7
    # Seeded permutation: reproducible, and different for another seed.
    assert torch.equal(ds.train, data.load_npz(tmp_path / "one.npz", (0.7, 0.2, 0.1), 3).train)
    perm = np.random.default_rng(3).permutation(100)
    assert torch.equal(ds.test, torch.from_numpy(x[perm[90:]]).float())

    with pytest.raises(DataError, match="fractions must be"):
        data.load_npz(tmp_path / "one.npz", fractions=(0.5, 0.2, 0.2))
    with pytest.raises(DataError, match=r"not in \{0, 1\}"):
        np.savez(tmp_path / "real.npz", x=np.full((10, 2), 0.5))
        data.load_npz(tmp_path / "real.npz", binary=True)
    np.savez(tmp_path / "tiny.npz", x=np.zeros((3, 2)))
    with pytest.raises(DataError, match="every split needs at least one row"):
        data.load_npz(tmp_path / "tiny.npz")


def test_user_npz_bad_keys(tmp_path):
    np.savez(tmp_path / "partial.npz", train=np.zeros((3, 2)), valid=np.zeros((3, 2)))
    with pytest.raises(DataError, match=r"but not \['test'\]"):
        data.load_npz(tmp_path / "partial.npz")
    np.savez(tmp_path / "many.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(DataError, match="exactly one array"):
        data.load_npz(tmp_path / "many.npz")
    with pytest.raises(DataError, match="not found"):
        data.load_npz(tmp_path / "absent.npz")


# --------------------------------------------------------------------------- dispatch


def test_load_dataset(tmp_path, monkeypatch):
    assert data.load_dataset("digits").dim == 64
    np.savez(tmp_path / "u.npz", x=np.zeros((20, 3)))
    assert data.load_dataset(str(tmp_path / "u.npz"), fractions=(0.5, 0.25, 0.25)).dim == 3
    assert data.load_dataset(tmp_path / "u.npz").dim == 3
    with pytest.raises(DataError, match="unknown data set 'mnist'.*digits, binarized-mnist"):
        data.load_dataset("mnist")
    with pytest.raises(DataError, match="not found in"):
        data.load_dataset("binarized_mnist", data_dir=tmp_path, download=False)


def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WAKESLEEP_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir() == tmp_path
    assert data.resolve_data_dir("/x/y") == Path("/x/y")
    monkeypatch.delenv("WAKESLEEP_DATA_DIR")
    assert data.resolve_data_dir() == Path.home() / ".cache" / "wakesleep"
