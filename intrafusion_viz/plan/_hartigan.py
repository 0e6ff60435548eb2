"""Hartigan's k-means, as Model Folding clusters channels (``prune(method="fold")``).

Model Folding (Wang et al., ICLR 2025; github marza96/ModelFolding, ``utils/weight_clustering.py``) clusters
each group's channel vectors (:func:`intrafusion_viz.repair._fold_repair.fold_vectors`) with
``RobustScaler`` -> ``PCA(n_components=n)`` -> ``hkmeans.HKMeans(n_clusters=k, n_init=10, max_iter=20)``
(PyPI ``hartigan-kmeans``; Hartigan's method, not "hierarchical" k-means).  This module is that pipeline:

* ``RobustScaler``: :func:`._kmeans.robust_scale` (scikit-learn's numbers, all columns at once).
* ``PCA`` with all ``n`` components is a centring and a rotation: it keeps every distance, so Hartigan runs
  on the Gram matrix of the centred, scaled vectors instead (no coordinates needed).
* ``HKMeans``: each of ``n_init`` runs starts from a random *balanced* partition (a permutation of
  ``floor(linspace(0, k, n, endpoint=False))``); every iteration visits the points in a random order, takes
  the point out of its cluster (never out of a singleton) and puts it into the cluster ``t`` minimising
  ``|t| / (|t| + 1) * ||x - c_t||^2`` (first on ties), the exact change of the k-means objective; a run stops
  when at most ``tol`` (2 %) of the points moved in an iteration, or after ``max_iter`` (20).  The run with
  the lowest objective wins (first on ties); the labels are then one pass that gives every point the
  cluster minimising the same cost with the winning centroids (the point not taken out), kept unless it
  would leave a cluster empty.
* Random numbers as HKMeans draws them: ``numpy.random.RandomState(seed)`` gives each group ``n_init`` run
  seeds (``randint(2**31 - 1, size=n_init)``) in group order, each run its own ``RandomState``.  With the
  groups in the same order this is the same stream as their ``numpy.random.seed(seed)``, so the clusters
  are theirs up to floating-point near-ties.

Speed: each visit costs O(k), each move O(n), with the distances read off the Gram matrix (``x . c_t`` = a
sum of Gram rows kept per cluster), not O(k d).  One iteration of one run is a few lines of C compiled once
into the per-user cache (as ``plan/_l1.py``; ``-ffp-contract=off``, so it computes the numpy path's numbers);
without a compiler (or with ``IFV_NO_C_KERNEL=1``) the numpy path advances the ``n_init`` runs together.
``hartigan-kmeans`` 0.0.6 itself is O(k d) per visit in C++, has no wheels after Python 3.10 and an sdist that
does not build (docs/results/model_folding_faithful.md).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["FoldSeeds", "fold_plan", "hartigan_kmeans", "kmeans_objective", "labels_plan"]

N_INIT, MAX_ITER, TOL = 10, 20, 0.02  # HKMeans(n_init=10, max_iter=20) as Model Folding calls it; tol its default


class FoldSeeds:
    """The run seeds of Model Folding's HKMeans calls: ``n_init`` draws per clustered group, in group order.

    ``FoldSeeds(seed)`` is ``numpy.random.seed(seed)`` followed by HKMeans' ``random_state=None``: each
    :meth:`next` is ``randint(2**31 - 1, size=n_init)`` from one ``RandomState(seed)``.
    """

    def __init__(self, seed: int = 0, n_init: int = N_INIT):
        self._rng = np.random.RandomState(seed)
        self.n_init = n_init

    def next(self) -> np.ndarray:
        return self._rng.randint(np.iinfo(np.int32).max, size=self.n_init)


def scaled_gram(vectors) -> np.ndarray:
    """(n, n) float64 Gram matrix of the RobustScaler-standardised, column-centred vectors (PCA's input)."""
    from ._kmeans import robust_scale

    x = robust_scale(np.asarray(vectors.detach().cpu().double() if torch.is_tensor(vectors) else vectors,
                                dtype=np.float64))
    x = x - x.mean(0, keepdims=True)
    return x @ x.T


def kmeans_objective(gram: np.ndarray, labels, k: Optional[int] = None) -> float:
    """Sum over clusters of squared distances to the cluster mean, from the Gram matrix of the points."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if k is None else k
    onehot = np.zeros((len(labels), k))
    onehot[np.arange(len(labels)), labels] = 1.0
    sizes = onehot.sum(0)
    ss = np.einsum("it,ij,jt->t", onehot, gram, onehot)
    filled = sizes > 0
    return float(np.trace(gram) - (ss[filled] / sizes[filled]).sum())


_SOURCE = r"""
/* One Hartigan iteration of one run: visit the points in perm order; sums[t * n + j] = x_j . S_t, sq[t] = |S_t|^2,
   size[t] = |t| (doubles), labels[i] = cluster of i.  cost holds k doubles of scratch.  Returns the number of
   points moved.  The arithmetic is the numpy path's, in the same order (compile with -ffp-contract=off). */
long ifv_hartigan_iteration(const double *gram, long n, long k, const long *perm, long *labels, double *size,
                            double *sums, double *sq, double *cost) {
    long changes = 0;
    for (long s = 0; s < n; s++) {
        long i = perm[s], a = labels[i];
        if (size[a] <= 1.0) continue;
        double g = gram[i * n + i];
        double xs_a = sums[a * n + i] - g;
        double sq_a = sq[a] - 2.0 * sums[a * n + i] + g;
        long best = 0;
        double best_cost = 0.0;
        for (long t = 0; t < k; t++) {
            double nt = size[t], xs = sums[t * n + i], q = sq[t];
            if (t == a) { nt -= 1.0; xs = xs_a; q = sq_a; }
            double safe = nt > 1.0 ? nt : 1.0;
            double c = nt / (nt + 1.0) * (g - 2.0 * xs / safe + q / (safe * safe));
            if (t == 0 || c < best_cost) { best = t; best_cost = c; }
        }
        if (best == a) continue;
        const double *row = gram + i * n;
        double *sa = sums + a * n, *sb = sums + best * n;
        double xs_b = sb[i];
        for (long j = 0; j < n; j++) { sa[j] -= row[j]; sb[j] += row[j]; }
        sq[a] = sq_a;
        sq[best] += 2.0 * xs_b + g;
        size[a] -= 1.0;
        size[best] += 1.0;
        labels[i] = best;
        changes++;
    }
    return changes;
}
"""
_lock = threading.Lock()
_kernel = None  # None: not tried yet; False: unavailable


def _load_kernel():
    """The compiled iteration (cached per source), or None where it cannot be built."""
    global _kernel
    if _kernel is not None:
        return _kernel or None
    with _lock:
        if _kernel is not None:
            return _kernel or None
        _kernel = False
        if os.environ.get("IFV_NO_C_KERNEL") or sys.platform == "win32":
            return None
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")
        if cc is None:
            return None
        key = hashlib.sha256((_SOURCE + platform.machine()).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("IFV_CACHE_DIR") or Path.home() / ".cache" / "intrafusion_viz")
        lib = cache / f"hartigan_{key}.so"
        try:
            if not lib.is_file():
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    src = Path(tmp) / "hartigan.c"
                    src.write_text(_SOURCE)
                    built = Path(tmp) / "hartigan.so"
                    subprocess.run([cc, "-O2", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC", str(src),
                                    "-o", str(built)], check=True, capture_output=True, timeout=120)
                    os.replace(built, lib)  # atomic: a concurrent process sees all or nothing
            fn = ctypes.CDLL(str(lib)).ifv_hartigan_iteration
            fn.restype = ctypes.c_long
            fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 6
            _kernel = fn
        except (OSError, subprocess.SubprocessError):
            _kernel = False
        return _kernel or None


def hartigan_backend() -> str:
    """``"c"`` when the compiled iteration is in use, else ``"numpy"``."""
    return "c" if _load_kernel() is not None else "numpy"


def hartigan_kmeans(gram: np.ndarray, k: int, seeds: Sequence[int], max_iter: int = MAX_ITER,
                    tol: float = TOL, backend: Optional[str] = None) -> Tuple[np.ndarray, float]:
    """Hartigan's k-means of the points whose Gram matrix is ``gram``; returns ``(labels (n,), objective)``.

    One run per seed, as HKMeans runs them (module docstring); the best run's labels after the final
    assignment pass.  ``backend``: ``"c"`` or ``"numpy"`` (default: C where it can be built).
    """
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    n = gram.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    kernel = _load_kernel() if backend in (None, "c") else None
    if backend == "c" and kernel is None:
        raise RuntimeError("the C Hartigan kernel cannot be built here (no C compiler, or IFV_NO_C_KERNEL set)")
    diag = gram.diagonal().copy()
    runs = [np.random.RandomState(int(s)) for s in seeds]
    r_count = len(runs)
    base = np.linspace(0, k, n, endpoint=False).astype(np.int32)
    labels = np.stack([rs.permutation(base) for rs in runs]).astype(np.int64)  # (R, n)
    sizes = np.zeros((r_count, k))
    sums = np.zeros((r_count, k, n))  # sums[r, t] = sum of Gram rows of cluster t = (x_j . S_t)_j
    for r in range(r_count):
        np.add.at(sizes[r], labels[r], 1.0)
        np.add.at(sums[r], labels[r], gram)
    ss = np.stack([sums[r][labels[r], np.arange(n)] for r in range(r_count)])  # (R, n): x_j . S_{t(j)}
    sq = np.zeros((r_count, k))  # |S_t|^2
    for r in range(r_count):
        np.add.at(sq[r], labels[r], ss[r])
    active = np.ones(r_count, dtype=bool)
    if kernel is not None:
        scratch = np.empty(k)
        for r in range(r_count):
            lab = np.ascontiguousarray(labels[r])
            size_r, sums_r, sq_r = (np.ascontiguousarray(a[r]) for a in (sizes, sums, sq))
            for _ in range(max_iter):
                perm = runs[r].permutation(n).astype(np.int64)
                changes = kernel(gram.ctypes.data, n, k, perm.ctypes.data, lab.ctypes.data, size_r.ctypes.data,
                                 sums_r.ctypes.data, sq_r.ctypes.data, scratch.ctypes.data)
                if changes / n <= tol:
                    break
            labels[r], sizes[r], sums[r], sq[r] = lab, size_r, sums_r, sq_r
        active[:] = False
    for _ in range(max_iter):
        act = np.flatnonzero(active)
        if len(act) == 0:
            break
        perms = np.stack([runs[r].permutation(n) for r in act])
        changes = np.zeros(len(act))
        rows = np.arange(len(act))
        for step in range(n):
            i = perms[:, step]
            a = labels[act, i]
            xs = sums[act, :, i]  # (A, k): x_i . S_t
            nt = sizes[act].copy()
            sqt = sq[act].copy()
            g_ii = diag[i]
            xs_a = xs[rows, a] - g_ii  # cluster a without x_i
            sq_a = sqt[rows, a] - 2.0 * xs[rows, a] + g_ii
            xs[rows, a] = xs_a
            sqt[rows, a] = sq_a
            nt[rows, a] -= 1.0
            safe = np.maximum(nt, 1.0)
            cost = nt / (nt + 1.0) * (g_ii[:, None] - 2.0 * xs / safe + sqt / safe ** 2)
            t = cost.argmin(1)
            moved = (t != a) & (sizes[act, a] > 1)
            if not moved.any():
                continue
            for j in np.flatnonzero(moved):
                r, ii, aa, tt = act[j], i[j], a[j], t[j]
                sums[r, aa] -= gram[ii]
                sums[r, tt] += gram[ii]
                sq[r, aa] = sq_a[j]
                sq[r, tt] += 2.0 * xs[j, tt] + g_ii[j]
                sizes[r, aa] -= 1.0
                sizes[r, tt] += 1.0
                labels[r, ii] = tt
            changes[moved] += 1
        active[act[changes / n <= tol]] = False
    objective = np.array([np.trace(gram) - (sq[r] / sizes[r]).sum() for r in range(r_count)])
    best = int(np.argmin(objective))  # first on ties
    nt = sizes[best]
    cost = nt / (nt + 1.0) * (diag[:, None] - 2.0 * sums[best].T / nt + sq[best] / nt ** 2)
    final = cost.argmin(1)
    if len(np.unique(final)) == k:  # HKMeans' labels_: one assignment pass with the best run's centroids
        return final, kmeans_objective(gram, final, k)
    return labels[best], float(objective[best])


def labels_plan(labels: torch.Tensor, importance: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kept, plan)`` of hard clusters: each cluster at its most important member's position.

    ``plan[i, j] = 1/n`` when channel ``i`` is in the cluster kept at ``kept[j]`` (barycentric merging then
    averages each cluster's producer rows and sums its consumer columns).
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = len(labels)
    imp = importance.detach().double().cpu()
    if torch.isnan(imp).any():
        imp = torch.zeros(n, dtype=torch.float64)
    reps = torch.stack([torch.nonzero(labels == c).flatten()[imp[labels == c].argmax()] for c in range(k)])
    order = torch.argsort(reps)
    kept = reps[order]
    column = torch.empty(k, dtype=torch.long)
    column[order] = torch.arange(k)
    plan = torch.zeros(n, k, dtype=torch.float64)
    plan[torch.arange(n), column[labels]] = 1.0 / n
    return kept, plan


def fold_labels(vectors: torch.Tensor, k: int, seeds: FoldSeeds) -> torch.Tensor:
    """Model Folding's cluster labels (n,) of one group's channel vectors (n, d) (module docstring)."""
    gram = scaled_gram(vectors)
    labels, _ = hartigan_kmeans(gram, k, seeds.next())
    return torch.as_tensor(labels, dtype=torch.long)


def fold_plan(vectors: torch.Tensor, importance: torch.Tensor, k: int,
              seeds: FoldSeeds) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cluster ``n`` channels into ``k`` as Model Folding does; returns ``(kept (k,), plan (n, k))``.

    ``seeds`` (:class:`FoldSeeds`) is shared by the groups of one ``prune`` call, in group order.
    """
    n = vectors.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n), torch.eye(n, dtype=torch.float64) / n
    return labels_plan(fold_labels(vectors, k, seeds), importance, k)
