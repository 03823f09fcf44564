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
    from trilens.probes.layerwise import Training, fit_predict_layers, fit_predict_rows

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
    on_disk = fit_predict_rows([chunked], y, keep, [chunked], test, "ridge", "regression", Training(alpha=3.0))
    in_memory = fit_predict_layers(x[keep][None], y[keep], x[test][None], "ridge", "regression", Training(alpha=3.0))
    np.testing.assert_allclose(on_disk.values, in_memory.values, rtol=1e-5, atol=1e-5)


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


def test_two_classes_reach_sklearns_binary_optimum():
    """scikit-learn fits one weight vector for two classes, penalised by ||w||^2 / 2; the softmax pair must
    reach the same logit difference (not the optimum of C twice as large)."""
    from trilens.probes import LogisticProbe

    x, y = data(n=600, d=30, classes=2, seed=7)
    z = ((x - x.mean(0)) / x.std(0, unbiased=False)).double()
    for C in (0.05, 1.0):
        ref = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit(z.numpy(), y.numpy())
        fit = fit_logistic(Rows(x), y, 2, C=C, tol=1e-7)
        w = fit.weight.double()
        np.testing.assert_allclose((w[:, 1] - w[:, 0]).numpy(), ref.coef_[0], atol=1e-4)
        np.testing.assert_allclose(float(fit.bias[1] - fit.bias[0]), ref.intercept_[0], atol=1e-4)
        probe = LogisticProbe(C=C, tol=1e-7).fit(z.numpy(), y.numpy())
        assert probe.coef_.shape == ref.coef_.shape == (1, 30) and probe.intercept_.shape == (1,)
        np.testing.assert_allclose(probe.coef_, ref.coef_, atol=1e-4)
        np.testing.assert_allclose(probe.decision_function(z.numpy()), ref.decision_function(z.numpy()), atol=1e-3)


def test_features_whose_mean_dwarfs_their_spread_keep_their_digits(tmp_path):
    """A CLS-like feature varying by 1e-5 of its mean: float32 products of the uncentred rows lose the signal;
    the fit (in memory and from chunks on disk) and its predictions must equal the fit on centred rows."""
    x, y = data(n=800, d=20, classes=2, seed=8, offset=0.0)
    tight = x / x.std(0) * 1e-4 + 10.0  # spread 1e-4, mean 10: ratio 1e5
    ref = fit_logistic(Rows(tight - tight.mean(0)), y, 2, tol=1e-6)
    fit = fit_logistic(Rows(tight), y, 2, tol=1e-6)
    assert fit.converged and ref.converged
    torch.testing.assert_close(fit.weight, ref.weight, atol=2e-3, rtol=1e-3)
    writer = RowWriter(tmp_path / "t.f32")
    writer.append(tight)
    chunked = fit_layers([writer.close(chunk_rows=128)], y, 2, tol=1e-6)
    torch.testing.assert_close(chunked.weight[0], ref.weight, atol=2e-3, rtol=1e-3)
    fitted = fit_layers(tight[None], y, 2, tol=1e-6)
    centred = fit_layers((tight - tight.mean(0))[None], y, 2, tol=1e-6)
    assert (fitted.predict(tight[None]) == centred.predict((tight - tight.mean(0))[None])).float().mean() > 0.995
    assert (fitted.predict(tight[None]) == y).float().mean() > 0.8  # the signal survived


def test_a_feature_is_a_feature_at_any_scale():
    """Standardising makes the fit scale-invariant, as scikit-learn's StandardScaler does, down to features of
    size 1e-30 (whose float32 squares underflow to 0) — a constant feature alone gets scale 1."""
    x, y = data(n=500, d=12, classes=2, seed=9, offset=0.0)
    small = x.clone()
    small[:, 0] *= 1e-30  # the signal-carrying feature, shrunk
    big, tiny = fit_layers(x[None], y, 2, tol=1e-7), fit_layers(small[None], y, 2, tol=1e-7)
    torch.testing.assert_close(tiny.weight, big.weight, atol=1e-4, rtol=1e-4)
    assert float(tiny.scale[0, 0]) == pytest.approx(float(big.scale[0, 0]) * 1e-30, rel=1e-5)
    const = torch.cat([x, torch.full((500, 1), 3.0)], 1)
    assert float(fit_layers(const[None], y, 2).scale[0, -1]) == 1.0
