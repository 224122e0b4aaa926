"""tensorcompress.data: fixed stratified splits, normalisation, caching, IDX reading, the sample image."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress.data import _cache


def _check_split(train, test, n_train, n_test, size):
    for ds, n in ((train, n_train), (test, n_test)):
        assert isinstance(ds, TensorDataset)
        x, y = ds.tensors
        assert x.shape == (n, 1, size, size) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(10))


def test_digits_split_sizes_stratification_and_normalisation():
    train, test = tc.data.load_digits()
    _check_split(train, test, 1437, 360, 8)
    x = train.tensors[0]
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(unbiased=False)) - 1) < 1e-5
    # stratified: each class keeps its share of the 1,797 images in the test split (within one image)
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(test.tensors[1].numpy()) - counts * 360 / 1797) <= 1)


def test_digits_test_split_uses_train_statistics_and_same_images():
    raw_train, raw_test = tc.data.load_digits(normalize=False)
    train, test = tc.data.load_digits()
    mean, std = raw_train.tensors[0].mean(), raw_train.tensors[0].std(unbiased=False)
    torch.testing.assert_close(test.tensors[0], (raw_test.tensors[0] - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(test.tensors[1], raw_test.tensors[1])
    # the split partitions scikit-learn's 1,797 images
    from sklearn.datasets import load_digits

    src = torch.from_numpy(load_digits().images.reshape(-1, 64).astype(np.float32))
    both = torch.cat([raw_train.tensors[0], raw_test.tensors[0]]).reshape(-1, 64)
    assert torch.equal(torch.sort(both.sum(1)).values, torch.sort(src.sum(1)).values)


def test_mnist_sample_split():
    train, test = tc.data.load_mnist_sample()
    _check_split(train, test, 4000, 1000, 28)
    assert torch.equal(test.tensors[1].bincount(), torch.full((10,), 100))
    assert torch.equal(train.tensors[1].bincount(), torch.full((10,), 400))
    # train and test are disjoint sets of distinct images
    rows = torch.cat([train.tensors[0], test.tensors[0]]).reshape(5000, -1)
    assert torch.unique(rows, dim=0).shape[0] == 5000


def test_splits_are_fixed_and_seeded():
    a, _ = tc.data.load_digits(seed=0)
    b, _ = tc.data.load_digits(seed=0)
    c, _ = tc.data.load_digits(seed=1)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[1], c.tensors[1])


def test_cache_written_and_fallback_when_repo_data_unwritable(tmp_path, monkeypatch):
    tc.data.load_digits()  # writes the cache if no earlier test did (the test must not depend on the order)
    assert (_cache.cache_dir() / "digits_seed0_test360_norm.npz").exists()
    monkeypatch.setattr(_cache, "repo_data_dir", lambda: tmp_path / "does_not_exist")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.cache_dir() == tmp_path / "xdg" / "tensorcompress"
    assert _cache.cache_dir().is_dir()


def test_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setattr(tc.data.datasets, "cache_dir", lambda: tmp_path)
    first = tc.data.load_digits(seed=3)
    assert [p.name for p in tmp_path.iterdir()] == ["digits_seed3_test360_norm.npz"]
    second = tc.data.load_digits(seed=3)  # from the cache
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors, strict=True))


def test_split_rejects_wrong_shape():
    with pytest.raises(ValueError, match="images must be N x C x H x W"):
        tc.data.datasets.split_and_normalize(np.zeros((10, 8, 8)), np.zeros(10), test_size=2, seed=0)


# ---------------------------------------------------------------- IDX files


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, rng, *, gz: bool, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        if gz:
            with gzip.open(folder / (name + ".gz"), "wb") as f:
                f.write(_idx_bytes(a))
        else:
            (folder / name).write_bytes(_idx_bytes(a))
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (3, 5, 7))
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(_idx_bytes(a))
    else:
        path.write_bytes(_idx_bytes(a))
    out = tc.data.read_idx(path)
    assert out.shape == (3, 5, 7) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, a)


def test_read_idx_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file: bad magic number"):
        tc.data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((4, 2)))[:-3])
    with pytest.raises(ValueError, match=r"header states shape \(4, 2\) \(8 bytes\) but 5 bytes follow"):
        tc.data.read_idx(short)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_load_mnist_from_idx(tmp_path, layout, gz):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = _write_mnist(folder, np.random.default_rng(1), gz=gz)
    raw_train, raw_test = tc.data.load_mnist(tmp_path, normalize=False)
    assert raw_train.tensors[0].shape == (6, 1, 28, 28) and raw_test.tensors[0].shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(raw_train.tensors[0][:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(raw_test.tensors[1].numpy(), arrays["t10k-labels-idx1-ubyte"])
    train, test = tc.data.load_mnist(tmp_path)
    x = arrays["train-images-idx3-ubyte"].astype(np.float32)
    expected = (arrays["t10k-images-idx3-ubyte"].astype(np.float32) - x.mean()) / x.std()
    np.testing.assert_allclose(test.tensors[0][:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_load_fashion_mnist_layout(tmp_path):
    _write_mnist(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(2), gz=True)
    train, test = tc.data.load_fashion_mnist(tmp_path)
    assert len(train) == 6 and len(test) == 4


def test_load_mnist_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found in .*t10k-labels"):
        tc.data.load_mnist(tmp_path)
    _write_mnist(tmp_path, np.random.default_rng(3), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in " + str(tmp_path)):
        tc.data.load_mnist(tmp_path)


def test_load_mnist_mismatched_counts(tmp_path):
    _write_mnist(tmp_path, np.random.default_rng(4), gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5)))
    msg = r"must hold N x H x W images and N labels, got shapes \(6, 28, 28\) and \(5,\)"
    with pytest.raises(ValueError, match=msg):
        tc.data.load_mnist(tmp_path)


# ---------------------------------------------------------------- augmentation and the sample image


def test_shift_augment_against_roll():
    x = torch.zeros(2, 1, 6, 6)
    x[:, :, 2:4, 2:4] = torch.arange(8.0).reshape(2, 1, 2, 2) + 1  # zero border: a shift equals a roll
    aug = tc.data.shift_augment(TensorDataset(x, torch.tensor([3, 7])))
    xa, ya = aug.tensors
    assert xa.shape == (10, 1, 6, 6) and ya.tolist() == [3, 7] * 5
    for k, (dy, dx) in enumerate([(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]):
        assert torch.equal(xa[2 * k : 2 * k + 2], torch.roll(x, (dy, dx), dims=(2, 3)))
    with pytest.raises(ValueError, match="must be smaller than the image size"):
        tc.data.shift_augment(TensorDataset(x, torch.tensor([3, 7])), shifts=[(6, 0)])
    with pytest.raises(TypeError, match="TensorDataset of N x C x H x W"):
        tc.data.shift_augment(TensorDataset(x.flatten(1), torch.tensor([3, 7])))


def test_sample_image_matches_pil(device, dtype):
    from matplotlib.cbook import get_sample_data
    from PIL import Image

    img = tc.data.sample_image(dtype=dtype, device=device)
    assert img.shape == (600, 512, 3) and img.dtype == dtype and img.device.type == torch.device(device).type
    with get_sample_data("grace_hopper.jpg") as f:
        ref = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64) / 255
    np.testing.assert_allclose(img.cpu().double().numpy(), ref, atol=1e-6)
    assert 0 <= float(img.min()) and float(img.max()) <= 1


def test_sample_image_rejects_integer_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating point torch.dtype, got torch.uint8"):
        tc.data.sample_image(dtype=torch.uint8)


@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), code=st.sampled_from([0x08, 0x0C, 0x0D]),
       gz=st.booleans())
def test_read_idx_property(tmp_path, shape, code, gz):
    dtype = {0x08: np.dtype(np.uint8), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4")}[code]
    a = np.random.default_rng(0).integers(0, 200, shape).astype(dtype)
    raw = bytes([0, 0, code, len(shape)]) + np.asarray(shape, dtype=">i4").tobytes() + a.tobytes()
    path = tmp_path / ("p.gz" if gz else "p")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = tc.data.read_idx(path)
    assert out.shape == tuple(shape) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


# ---------------------------------------------------------------- hostile input: degenerate images, corrupt caches


@pytest.mark.parametrize("value", [0, 255])
def test_load_mnist_constant_train_images_is_an_error(tmp_path, value):
    arrays = _write_mnist(tmp_path, np.random.default_rng(5), gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.full((6, 28, 28), value)))
    path = str(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(ValueError, match=rf"{path}: the training images are constant \(every pixel = {value}\).*"
                                         r"normalize=False"):
        tc.data.load_mnist(tmp_path)
    train, test = tc.data.load_mnist(tmp_path, normalize=False)  # raw values are fine
    assert float(train.tensors[0].min()) == float(train.tensors[0].max()) == value
    np.testing.assert_array_equal(test.tensors[0][:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


@pytest.mark.parametrize("normalize", [True, False])
def test_load_mnist_empty_train_images_is_an_error(tmp_path, normalize):
    _write_mnist(tmp_path, np.random.default_rng(6), gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((0, 28, 28))))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(0)))
    path = str(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(ValueError, match=rf"{path} holds no images \(shape \(0, 28, 28\)\)"):
        tc.data.load_mnist(tmp_path, normalize=normalize)


def test_split_and_normalize_constant_images_is_an_error():
    images, labels = np.ones((20, 1, 4, 4), np.float32), np.arange(20) % 2
    with pytest.raises(ValueError, match=r"images: the training images are constant \(every pixel = 1\)"):
        tc.data.datasets.split_and_normalize(images, labels, test_size=4, seed=0)
    train, _ = tc.data.datasets.split_and_normalize(images, labels, test_size=4, seed=0, normalize=False)
    assert torch.equal(train.tensors[0], torch.ones(16, 1, 4, 4))


def _corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_garbage(path):
    path.write_bytes(b"not an npz file at all")


def _corrupt_missing_key(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "y_test"}
    np.savez(path, **arrays)


def _corrupt_wrong_length(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y_train"] = arrays["y_train"][:-1]
    np.savez(path, **arrays)


@pytest.mark.parametrize("corrupt", [_corrupt_truncated, _corrupt_garbage, _corrupt_missing_key, _corrupt_wrong_length])
def test_corrupt_cache_is_rebuilt_with_a_warning_naming_it(tmp_path, monkeypatch, corrupt):
    monkeypatch.setattr(tc.data.datasets, "cache_dir", lambda: tmp_path)
    first = tc.data.load_digits(seed=4)
    path = tmp_path / "digits_seed4_test360_norm.npz"
    corrupt(path)
    with pytest.warns(UserWarning, match=rf"data cache {path} is unreadable or inconsistent .*; rebuilding it"):
        again = tc.data.load_digits(seed=4)
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a.tensors, b.tensors, strict=True))
    with np.load(path) as z:  # the rebuilt cache is whole again
        assert sorted(z.files) == ["x_test", "x_train", "y_test", "y_train"] and len(z["y_train"]) == 1437


def test_train_statistics_large_constant_set_is_caught_exactly():
    # 2**25 pixels of 0.1: the float32 mean rounds, so the standard deviation alone need not come out exactly 0
    with pytest.raises(ValueError, match=r"x: the training images are constant \(every pixel = 0.1\)"):
        tc.data.datasets.train_statistics(np.full((2**19, 1, 8, 8), 0.1, np.float32), "x")
    with pytest.raises(ValueError, match="x: the training images hold NaN or Inf pixels"):
        tc.data.datasets.train_statistics(np.array([[[[0.0, np.nan]]]], np.float32), "x")
    assert tc.data.datasets.train_statistics(np.array([[[[1.0, 3.0]]]], np.float32), "x") == (2.0, 1.0)


# ---------------------------------------------------------------- the text corpus


@pytest.fixture(scope="module")
def corpus():
    return tc.data.load_text()


def test_load_text_is_the_frozen_python_topics(corpus):
    import hashlib

    from tensorcompress.data import text

    whole = torch.cat([corpus.train, corpus.val, corpus.test])
    decoded = corpus.decode(whole)
    assert len(decoded) == 464_970 and hashlib.sha256(decoded.encode()).hexdigest() == text.TEXT_SHA256
    assert text.TEXT_PATH.stat().st_size < 1_000_000
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in text.TEXT_LICENSE_PATH.read_text()
    # the vocabulary: the corpus' sorted characters, token i the i-th
    assert corpus.vocab == "".join(sorted(set(decoded))) and corpus.vocab_size == len(corpus.vocab) == 103
    # the frozen text still is what this Python's pydoc_data holds (it is the same 3.11.7 here)
    import sys

    if sys.version_info[:3] == (3, 11, 7):
        from pydoc_data import topics

        assert decoded == "".join(topics.topics[k] for k in sorted(topics.topics))


def test_load_text_split_is_contiguous_90_5_5(corpus):
    n = 464_970
    sizes = [corpus.train.numel(), corpus.val.numel(), corpus.test.numel()]
    assert sizes == [int(0.9 * n), int(0.05 * n), n - int(0.9 * n) - int(0.05 * n)] == [418_473, 23_248, 23_249]
    for t in (corpus.train, corpus.val, corpus.test):
        assert t.dtype == torch.int64 and t.ndim == 1 and int(t.min()) >= 0 and int(t.max()) < corpus.vocab_size
    text = corpus.decode(torch.cat([corpus.train, corpus.val, corpus.test]))
    assert corpus.decode(corpus.val) == text[418_473:418_473 + 23_248]


def test_encode_decode_round_trip_and_unknown_character(corpus):
    s = "def f(x):\n    return x ** 2  # “quoted”"
    tokens = corpus.encode(s)
    assert tokens.dtype == torch.int64 and corpus.decode(tokens) == s
    assert [corpus.vocab[i] for i in tokens.tolist()] == list(s)
    assert corpus.encode("").shape == (0,)
    with pytest.raises(ValueError, match=r"character 'é' \(U\+00E9\), which is not in the vocabulary of 103"):
        corpus.encode("café")
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        corpus.encode(b"abc")
    with pytest.raises(ValueError, match=r"tokens must lie in 0 \.\. 102, got 103"):
        corpus.decode(torch.tensor([1, 103]))
    with pytest.raises(TypeError, match="tokens must be an integer torch.Tensor, got a tensor of dtype torch.float32"):
        corpus.decode(torch.zeros(3))
    with pytest.raises(ValueError, match=r"tokens must be 1-D, got shape \(1, 2\)"):
        corpus.decode(torch.zeros(1, 2, dtype=torch.int64))


def test_load_text_refuses_a_changed_file(tmp_path):
    import lzma

    from tensorcompress.data import text

    path = tmp_path / "t.txt.xz"
    path.write_bytes(lzma.compress(b"not the corpus"))
    with pytest.raises(ValueError, match="SHA-256 .* not the recorded 37d06970"):
        text.read_text(path)
    assert text.read_text(path, sha256=__import__("hashlib").sha256(b"not the corpus").hexdigest()) == "not the corpus"


def test_text_windows_are_seeded_slices():
    tokens = torch.arange(1000)
    w = tc.data.text_windows(tokens, 50, 17, seed=3)
    assert w.shape == (50, 17) and w.dtype == torch.int64
    assert torch.equal(w - w[:, :1], torch.arange(17).expand(50, 17))  # consecutive tokens
    assert int(w[:, 0].min()) >= 0 and int(w[:, -1].max()) <= 999
    assert torch.equal(w, tc.data.text_windows(tokens, 50, 17, seed=3))
    assert not torch.equal(w, tc.data.text_windows(tokens, 50, 17, seed=4))
    assert torch.equal(tc.data.text_windows(tokens.int(), 2, 1000), tokens.expand(2, 1000))  # the whole text
    start = torch.randint(0, 1000 - 17 + 1, (50,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(w[:, 0], start)  # offsets drawn as documented


def test_text_windows_bad_arguments():
    tokens = torch.arange(10)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        tc.data.text_windows(tokens, 0, 4)
    with pytest.raises(TypeError, match=r"context must be an int, got float \(4.0\)"):
        tc.data.text_windows(tokens, 2, 4.0)
    with pytest.raises(ValueError, match="context must be at most len\\(tokens\\) = 10, got 11"):
        tc.data.text_windows(tokens, 2, 11)
    with pytest.raises(ValueError, match="context must be >= 1, got 0"):
        tc.data.text_windows(tokens, 2, 0)
    with pytest.raises(TypeError, match="tokens must be an integer torch.Tensor"):
        tc.data.text_windows(tokens.float(), 2, 4)
    with pytest.raises(ValueError, match=r"tokens must be 1-D, got shape \(2, 5\)"):
        tc.data.text_windows(tokens.view(2, 5), 2, 4)
