"""The machinery under every probe: the logistic solver reaches scikit-learn's optimum, reads the data
twice per iteration, weights leave examples out exactly, rows read in chunks from a file give the same
fit, and one pooling rule (``Members``) pools texts and store shards like a loop over texts."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from trilens.probes.batched import fit_layers
from trilens.probes.rows import ChunkedRows, Rows, RowWriter
from trilens.probes.solver import fit_logistic


def data(n=900, d=40, classes=3, seed=0, offset=5.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    scale = torch.rand(d, generator=g) * 4 + 0.1  # features on different scales and far from zero
    x = torch.randn(n, d, generator=g) * scale + offset
    x[:, :classes] += 1.5 * torch.nn.functional.one_hot(y, classes) * scale[:classes]
    return x, y


def objective(x, y, coef, intercept, C=1.0):
    """scikit-learn's objective on standardised features: mean cross-entropy + ||W||^2 / (2 C n)."""
    x, coef, intercept = x.double(), torch.as_tensor(coef).double(), torch.as_tensor(intercept).double()
    z = (x - x.mean(0)) / x.std(0, unbiased=False)
    logp = (z @ coef + intercept).log_softmax(-1)
    return float(-logp[torch.arange(len(y)), y].mean() + (coef * coef).sum() / (2 * C * len(y)))


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
def test_solver_reaches_sklearn_optimum(C):
    x, y = data()
    fit = fit_logistic(Rows(x), y, 3, C=C, tol=1e-6)
    assert fit.converged
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    ref = LogisticRegression(C=C, tol=1e-8, max_iter=5000).fit(z, y.numpy())
    ours = objective(x, y, fit.weight, fit.bias, C)
    theirs = objective(x, y, ref.coef_.T, ref.intercept_, C)
    assert ours <= theirs + 1e-6
    # the softmax weights are defined up to a per-feature constant
    w = fit.weight.double().numpy()
    np.testing.assert_allclose(w - w.mean(1, keepdims=True), ref.coef_.T - ref.coef_.T.mean(1, keepdims=True), atol=2e-3)


class CountingRows(Rows):
    def __init__(self, x):
        super().__init__(x)
        self.passes = 0

    def matmul(self, w):
        self.passes += 1
        return super().matmul(w)

    def rmatmul(self, r):
        self.passes += 1
        return super().rmatmul(r)


def test_an_iteration_reads_the_data_twice_whatever_its_line_search():
    x, y = data(seed=1)
    rows = CountingRows(x)
    fit = fit_logistic(rows, y, 3)
    assert fit.converged and fit.n_iter > 5
    assert rows.passes == 1 + 2 * fit.n_iter  # the first gradient, then X p and X.T r per iteration


def test_zero_weights_leave_examples_out():
    x, y = data(seed=2)
    keep = torch.rand(len(y), generator=torch.Generator().manual_seed(0)) < 0.6
    weighted = fit_logistic(Rows(x), y, 3, weight=keep.double(), tol=1e-6)
    subset = fit_logistic(Rows(x[keep]), y[keep], 3, tol=1e-6)
    torch.testing.assert_close(weighted.mean, subset.mean, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(weighted.scale, subset.scale, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(weighted.weight, subset.weight, atol=2e-3, rtol=0)


def test_rows_read_in_chunks_from_a_file_equal_rows_in_memory(tmp_path):
    x, y = data(n=1000, seed=3)
    writer = RowWriter(tmp_path / "layer.f32")
    for start in range(0, 1000, 300):  # written in blocks that do not match the read chunks
        writer.append(x[start:start + 300])
    chunked = writer.close(chunk_rows=128)
    assert chunked.n == 1000 and chunked.dim == 40 and len(chunked.sizes) == 8
    assert (tmp_path / "layer.f32").stat().st_size == 1000 * 40 * 4
    mem = Rows(x)
    w, r = torch.randn(40, 3), torch.randn(1000, 3)
    torch.testing.assert_close(chunked.matmul(w), mem.matmul(w))
    torch.testing.assert_close(chunked.rmatmul(r), mem.rmatmul(r), rtol=1e-4, atol=1e-3)
    for a, b in zip(chunked.moments(), mem.moments()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    index = np.array([999, 0, 130, 127, 128, 500])
    torch.testing.assert_close(chunked.take(index), x[index])
    a = fit_layers([chunked, ChunkedRows.from_arrays([x[:10].numpy(), x[10:].numpy()])], y, 3)
    b = fit_layers(x[None].expand(2, -1, -1), y, 3, workers=1)
    torch.testing.assert_close(a.weight, b.weight, atol=1e-3, rtol=0)
    assert a.n_iter.tolist() == b.n_iter.tolist()
    with pytest.raises(ValueError, match=r"\[rows, 40\] blocks"):
        RowWriter(tmp_path / "bad.f32").append(torch.zeros(3, 40)[None])


def test_ridge_on_chunked_rows_with_weights_equals_ridge_on_the_subset_in_memory(tmp_path):
    """The streamed closed form (moments, centred Gram, X^T y) equals the in-memory solve on the kept rows,
    and layerwise probing routes a ridge probe on on-disk features to it."""
    from trilens.probes.batched import fit_ridge_layers, fit_ridge_rows
    from trilens.probes.layerwise import fit_predict_layers, fit_predict_rows

    x, _ = data(n=700, d=30, seed=6, offset=50.0)  # far from zero: a Gram matrix that is not centred would lose digits
    target = x[:, :3].double() @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + torch.randn(700, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    keep = np.flatnonzero(torch.rand(700, generator=torch.Generator().manual_seed(1)).numpy() < 0.7)
    weight = torch.zeros(700, dtype=torch.float64)
    weight[keep] = 1.0
    writer = RowWriter(tmp_path / "layer.f32")
    writer.append(x)
    chunked = writer.close(chunk_rows=100)
    streamed = fit_ridge_rows([chunked, Rows(x)], target, weight=weight, alpha=3.0)
    exact = fit_ridge_layers(x[keep][None].double(), target[keep], alpha=3.0)
    for layer in range(2):
        torch.testing.assert_close(streamed.weight[layer], exact.weight[0], rtol=1e-4, atol=5e-5)  # float32 statistics; |weight| up to 4.6
        torch.testing.assert_close(streamed.predict_rows(layer, chunked), exact.predict(x[None].double())[0], rtol=1e-5, atol=1e-5)
    test = np.setdiff1d(np.arange(700), keep)
    y = target.numpy()
    on_disk = fit_predict_rows([chunked], y, keep, [chunked], test, "ridge", "regression", alpha=3.0)
    in_memory = fit_predict_layers(x[keep][None], y[keep], x[test][None], "ridge", "regression", alpha=3.0)
    np.testing.assert_allclose(on_disk, in_memory, rtol=1e-5, atol=1e-5)


def test_layers_on_threads_equal_layers_one_by_one():
    x = torch.stack([data(seed=s)[0] for s in range(4)])
    y = data()[1]
    threads = torch.get_num_threads()
    a = fit_layers(x, y, 3, workers=2)
    assert torch.get_num_threads() == threads  # restored
    b = fit_layers(x, y, 3, workers=1)
    torch.testing.assert_close(a.weight, b.weight, atol=1e-4, rtol=0)
    assert (a.predict(x) == b.predict(x)).float().mean() > 0.999


@pytest.mark.parametrize("pooling", ["first", "last", "mean", 1, -2])
def test_members_pool_every_text_like_a_loop_over_texts(pooling):
    from trilens.probes.representations import Members

    lengths = torch.tensor([3, 1, 4, 2, 5]) if pooling not in (1, -2) else torch.tensor([3, 2, 4, 2, 5])
    starts = torch.cumsum(lengths, 0) - lengths
    rows = torch.randn(2, int(lengths.sum()), 6)  # [layer, rows, d]
    members = Members.of_texts(starts, lengths, pooling)
    expected = []
    for s, n in zip(starts.tolist(), lengths.tolist()):
        seg = rows[:, s:s + n]
        expected.append(seg.mean(1) if pooling == "mean" else seg[:, {"first": 0, "last": -1}.get(pooling, pooling)])
    torch.testing.assert_close(members.pool(rows), torch.stack(expected, 1))
    # a block of rows (a store shard) holding texts 2-3 pools exactly those texts
    lo, hi = int(starts[2]), int(starts[4])
    torch.testing.assert_close(members.within(lo, hi).pool(rows[:, lo:hi]), torch.stack(expected, 1)[:, 2:4])


def test_members_refuse_a_position_outside_a_text():
    from trilens.errors import InputError
    from trilens.probes.representations import Members

    with pytest.raises(InputError, match=r"position 3 is outside text\(s\) \[1\]"):
        Members.of_texts(torch.tensor([0, 5]), torch.tensor([5, 2]), 3)


def test_a_probe_stopped_by_max_iter_says_so():
    from sklearn.exceptions import ConvergenceWarning

    from trilens.probes import LogisticProbe

    x, y = data(seed=5)
    with pytest.warns(ConvergenceWarning, match="did not reach tol"):
        probe = LogisticProbe(max_iter=2).fit(x.numpy(), y.numpy())
    assert probe.n_iter_ == 2
    assert not fit_layers(x[None], y, 3, max_iter=2).converged[0] and fit_layers(x[None], y, 3).converged[0]
