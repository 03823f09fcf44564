"""A layer's examples as a matrix that a solver reads in passes: held in memory, or in chunks from disk.

A linear probe only ever needs four things from its ``[n, d]`` features: ``X @ W``, ``X.T @ R``,
per-feature moments and (ridge) the centred Gram matrix. ``Rows`` gives those for a tensor; ``ChunkedRows`` gives the same for arrays
read a chunk at a time (features written to a file on disk, or any list of arrays), so a probe can
be trained on more examples than fit in memory at the cost of re-reading them once per pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch


BLOCK = 1024  # rows per step of the moments: cache-sized, ~10x faster than torch.var_mean's column reduction here


def _times(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w`` for a skinny ``w``: ``linear`` takes a 3-4x faster kernel than ``matmul`` for [n, 768] @ [768, 4] on CPU."""
    return torch.nn.functional.linear(x, w.T.contiguous())


def _transposed_times(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``x.T @ r`` read row by row (no transposed copy of ``x``, which costs more than the product)."""
    return (r.T.contiguous() @ x).T


class _RowSource:
    """What both kinds of rows share: statistics computed from consecutive parts of the rows."""

    n: int

    def parts(self):
        """Consecutive ``(start, x [m, d] float32)`` parts covering every row once."""
        raise NotImplementedError

    def _weighted_parts(self, weight: torch.Tensor | None):
        for start, x in self.parts():
            yield x, (torch.ones(x.shape[0], dtype=torch.float64) if weight is None else weight[start:start + x.shape[0]])

    def centred(self, shift: torch.Tensor) -> _RowSource:
        """The rows minus ``shift [d]`` (float32), for products that keep their digits.

        A residual-stream feature can have a mean 10^5 times its spread (the CLS vector of early layers
        barely moves); ``X @ w - mean @ w`` in float32 then loses every digit of the signal, while
        ``(X - shift) @ w`` with ``shift`` = the float32 mean subtracts exactly (Sterbenz) and keeps them.
        """
        raise NotImplementedError

    def moments(self, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and variance (float64), weighted by ``weight [n]`` if given."""
        mean, var = _weighted_moments(self._weighted_parts(weight))
        tiny = (var < 1e-30).nonzero().flatten()  # float32 squares below ~1e-38 round to 0: sum these in float64
        if len(tiny):
            parts = ((x[:, tiny], w) for x, w in self._weighted_parts(weight))
            mean[tiny], var[tiny] = _weighted_moments(parts, torch.float64)
        return mean, var

    def centred_gram(self, mean: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_i w_i (x_i - mean)(x_i - mean)^T`` ``[d, d]`` (float64 across parts, float32 within one)."""
        gram = None
        m32 = mean.float()
        for x, w in self._weighted_parts(weight):
            xc = x - m32
            part = ((xc * w.to(xc.dtype)[:, None]).T @ xc).double()
            gram = part if gram is None else gram + part
        return gram


class Rows(_RowSource):
    """``[n, d]`` features held in memory (float32)."""

    def __init__(self, x: torch.Tensor):
        self.x = x if x.dtype == torch.float32 else x.float()

    def centred(self, shift: torch.Tensor) -> Rows:
        """These rows minus ``shift [d]``: a copy. See ``_RowSource.centred``."""
        return Rows(self.x - shift.float())

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def matmul(self, w: torch.Tensor) -> torch.Tensor:
        """``X @ w`` for ``w [d, k]`` -> ``[n, k]``."""
        return _times(self.x, w)

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        """``X.T @ r`` for ``r [n, k]`` -> ``[d, k]``."""
        return _transposed_times(self.x, r)

    def take(self, index: np.ndarray) -> torch.Tensor:
        return self.x[torch.as_tensor(np.asarray(index), dtype=torch.long)]

    def parts(self):
        return ((i, self.x[i:i + BLOCK]) for i in range(0, self.n, BLOCK))


class ChunkedRows(_RowSource):
    """Features stored as consecutive row chunks, read (and converted to float32) one chunk per step.

    ``read(i)`` returns chunk ``i`` as an ``[sizes[i], dim]`` array. Memory holds one chunk at a time,
    whatever the number of examples; ``from_file`` reads a raw float32 file with plain reads (no memory
    map, whose pages would count as the process's memory).
    """

    def __init__(self, sizes: Sequence[int], dim: int, read: Callable[[int], np.ndarray]):
        if not len(sizes):
            raise ValueError("ChunkedRows needs at least one chunk.")
        self.sizes = list(sizes)
        self.dim = dim
        self._reader = read
        self.bounds = np.cumsum([0] + self.sizes)

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray]) -> ChunkedRows:
        return cls([a.shape[0] for a in arrays], arrays[0].shape[1], lambda i: arrays[i])

    @classmethod
    def from_file(cls, path: str | os.PathLike, n: int, dim: int, chunk_rows: int = 8192) -> ChunkedRows:
        """Rows of a headerless float32 file of ``n x dim`` values (as ``RowWriter`` writes them)."""
        starts = list(range(0, n, chunk_rows))

        def read(i: int) -> np.ndarray:
            count = min(chunk_rows, n - starts[i])
            out = np.fromfile(path, dtype="<f4", count=count * dim, offset=starts[i] * dim * 4)
            return out.reshape(count, dim)

        return cls([min(chunk_rows, n - s) for s in starts], dim, read)

    @property
    def n(self) -> int:
        return int(self.bounds[-1])

    def centred(self, shift: torch.Tensor) -> ChunkedRows:
        """These rows minus ``shift [d]``, subtracted from each chunk as it is read. See ``_RowSource.centred``."""
        shift32 = shift.float().numpy()
        return ChunkedRows(self.sizes, self.dim, lambda i: np.asarray(self._reader(i), dtype=np.float32) - shift32)

    def _read(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._reader(i), dtype=np.float32))

    def matmul(self, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([_times(self._read(i), w) for i in range(len(self.sizes))])

    def rmatmul(self, r: torch.Tensor) -> torch.Tensor:
        return sum(_transposed_times(self._read(i), r[self.bounds[i]:self.bounds[i + 1]]) for i in range(len(self.sizes)))

    def take(self, index: np.ndarray) -> torch.Tensor:
        """The rows ``index`` (in that order) as one float32 tensor, read chunk by chunk."""
        index = np.asarray(index)
        out = torch.empty(len(index), self.dim)
        chunk_of = np.searchsorted(self.bounds, index, side="right") - 1
        for i in np.unique(chunk_of):
            sel = np.nonzero(chunk_of == i)[0]
            out[torch.from_numpy(sel)] = self._read(int(i))[torch.from_numpy(index[sel] - self.bounds[i])]
        return out

    def parts(self):
        return ((int(self.bounds[i]), self._read(i)) for i in range(len(self.sizes)))


class RowWriter:
    """Appends ``[m, dim]`` blocks of rows to a headerless float32 file, for ``ChunkedRows.from_file``."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.dim, self.n = path, None, 0
        self._file = open(path, "wb")

    def append(self, rows: torch.Tensor | np.ndarray) -> None:
        arr = np.ascontiguousarray(rows.numpy() if isinstance(rows, torch.Tensor) else rows, dtype="<f4")
        self.dim = self.dim or arr.shape[-1]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"RowWriter expects [rows, {self.dim}] blocks, got {arr.shape}.")
        arr.tofile(self._file)
        self.n += arr.shape[0]

    def close(self, chunk_rows: int = 8192) -> ChunkedRows:
        self._file.close()
        return ChunkedRows.from_file(self.path, self.n, self.dim, chunk_rows)


def split_mean(mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` as a float32 shift that rows subtract exactly (``centred``) plus the float64 remainder."""
    shift = mean.float()
    return shift, mean.double() - shift.double()


def centred_times(rows: _RowSource, mean: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(X - mean) @ w`` ``[n, k]`` (float64) in one pass over ``rows``, keeping its digits (see ``centred``)."""
    shift, rest = split_mean(mean)
    return rows.centred(shift).matmul(w.float()).double() - rest @ w.double()


def feature_scale(mean: torch.Tensor, var: torch.Tensor, n: float, standardize: bool = True) -> torch.Tensor:
    """Per-feature standard deviation to divide by: 1 where a feature is constant, by scikit-learn's test (a
    variance within the float64 error bound of computing it; ``StandardScaler``'s rule, so a feature scaled by
    1e-30 is still a feature), or everywhere when not ``standardize``."""
    if not standardize:
        return torch.ones_like(var)
    eps = torch.finfo(torch.float64).eps
    constant = var.double() <= n * eps * var.double() + (n * mean.double() * eps) ** 2
    return torch.where(constant, torch.ones_like(var), var.sqrt())


def _weighted_moments(parts, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and variance (float64) from ``(x [m, d], weight [m])`` parts, in one pass (shifted sums,
    in ``dtype`` within a part)."""
    total = s1 = s2 = shift = None
    for x, w in parts:
        x = x.to(dtype)
        w = w.to(dtype)
        if shift is None:
            shift = x[0]  # shifting by one example keeps the sums of squares well conditioned
            total, s1, s2 = (torch.zeros((), dtype=torch.float64), torch.zeros_like(shift, dtype=torch.float64),
                             torch.zeros_like(shift, dtype=torch.float64))
        xc = x - shift
        total += w.sum().double()
        s1 += (w @ xc).double()  # in ``dtype`` within a part, float64 across parts
        s2 += (w @ (xc * xc)).double()
    if total is None or total <= 0:
        raise ValueError("moments of no examples (every weight is zero).")
    mean_c = s1 / total
    return shift.double() + mean_c, (s2 / total - mean_c ** 2).clamp_min(0)
