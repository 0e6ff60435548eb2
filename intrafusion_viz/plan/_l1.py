"""Pairwise L1 distances (the p = 1 cost of the paper's setting), fast on one CPU thread.

``torch.cdist(p=1)`` on CPU sums each pair's ``|a_t - b_t|`` one element after the other in float32
(about 0.9 s for 256 x 256 pairs of 9,216-long vectors on one thread here), and that is most of the
time of one Intra-Fusion step at p = 1.  This module computes the *same numbers, bit for bit* (each
pair summed in float32 in the same order, so plans and kept channels match the paper's code, which
uses ``torch.cdist``), vectorised across pairs instead of along the vectors: about 10x faster.

The kernel is a few lines of C compiled once with the system C compiler into a per-user cache
(``$IFV_CACHE_DIR`` or ``~/.cache/intrafusion_viz``) and loaded with ``ctypes``.  Where there is no
compiler (or ``IFV_NO_C_KERNEL=1``) ``torch.cdist`` itself is used: the same numbers, slower.
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
from typing import Optional

import torch

__all__ = ["l1_distances", "l1_backend"]

_SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#ifndef MA
#define MA 4
#endif
#ifndef NC
#define NC 64
#endif
#define TC 256
/* out[i * k + j] = sum_t |a[i, t] - b[j, t]|, summed in float32 in the order t = 0, 1, ..., d - 1,
   which is what torch.cdist(p=1) computes on CPU, bit for bit.  Vectorised across pairs (each SIMD
   lane is one pair), not along t; t is tiled (TC) so the tiles stay in cache, and each pair's partial
   sum is carried over in float32, so the order of its additions is unchanged.
   Row i of the left side is a[ia[i]] (a[i] where ia is NULL).
   bt is b transposed, (d, ldb), ldb a multiple of NC, zero-padded.  sym: a == b (k == n); only the
   column strips from the diagonal on are computed and the rest mirrored.  Returns 0, or -1 when out
   of memory. */
int ifv_l1_cdist(const float *a, const long *ia, const float *bt, double *out, long n, long k, long d, long ldb,
                 int sym) {
    long nb = (n + MA - 1) / MA;
    float *acc_all = calloc((size_t)nb * MA * ldb, sizeof(float));
    if (!acc_all) return -1;
    for (long t0 = 0; t0 < d; t0 += TC) {
        long t1 = t0 + TC < d ? t0 + TC : d;
        for (long i0 = 0; i0 < n; i0 += MA) {
            const float *rows[MA];
            for (int r = 0; r < MA; r++) {
                long i = i0 + r < n ? i0 + r : i0;
                rows[r] = a + (ia ? ia[i] : i) * d;
            }
            for (long j0 = sym ? (i0 / NC) * NC : 0; j0 < k; j0 += NC) {
                float acc[MA][NC];
                float *keep = acc_all + i0 * ldb + j0;
                for (int r = 0; r < MA; r++)
                    for (int l = 0; l < NC; l++) acc[r][l] = keep[r * ldb + l];
                for (long t = t0; t < t1; t++) {
                    const float *bp = bt + t * ldb + j0;
                    for (int r = 0; r < MA; r++) {
                        float x = rows[r][t];
                        for (int l = 0; l < NC; l++) acc[r][l] += fabsf(x - bp[l]);
                    }
                }
                for (int r = 0; r < MA; r++)
                    for (int l = 0; l < NC; l++) keep[r * ldb + l] = acc[r][l];
            }
        }
    }
    for (long i = 0; i < n; i++)
        for (long j = sym ? (i / MA * MA / NC) * NC : 0; j < k; j++) {
            double s = acc_all[i * ldb + j];
            out[i * k + j] = s;
            if (sym) out[j * k + i] = s;
        }
    free(acc_all);
    return 0;
}
"""

_COLUMNS = 64  # NC in the kernel (set by _load_kernel)
_lock = threading.Lock()
_kernel = None  # None: not tried yet; False: unavailable


def _cpu_tag() -> str:
    tag = platform.machine() + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    tag += line
    except OSError:
        pass
    return tag


def _load_kernel():
    """The compiled kernel (cached per source and CPU), or None where it cannot be built."""
    global _kernel, _COLUMNS
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
        # Tile shape: MA rows by NC columns of accumulators.  With 32 vector registers (AVX-512),
        # 8 x 32 fits in registers and wastes less padding than 4 x 64 (about 1.2x faster here).
        wide = "avx512f" in _cpu_tag()
        shape = ["-DMA=8", "-DNC=32"] if wide else ["-DMA=4", "-DNC=64"]
        columns = 32 if wide else 64
        key = hashlib.sha256((_SOURCE + _cpu_tag() + " ".join(shape)).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("IFV_CACHE_DIR") or Path.home() / ".cache" / "intrafusion_viz")
        lib = cache / f"l1_{key}.so"
        try:
            if not lib.is_file():
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    src = Path(tmp) / "l1.c"
                    src.write_text(_SOURCE)
                    built = Path(tmp) / "l1.so"
                    flags = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", *shape]
                    try:  # 512-bit vectors where the CPU has them: about 1.2x faster
                        subprocess.run([cc, *flags, "-mprefer-vector-width=512", str(src), "-o", str(built)],
                                       check=True, capture_output=True, timeout=120)
                    except subprocess.CalledProcessError:
                        subprocess.run([cc, *flags, str(src), "-o", str(built)], check=True,
                                       capture_output=True, timeout=120)
                    os.replace(built, lib)  # atomic: a concurrent process sees all or nothing
            fn = ctypes.CDLL(str(lib)).ifv_l1_cdist
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 4 + [ctypes.c_int]
            _COLUMNS = columns
            _kernel = fn if _self_check(fn) else False
        except (OSError, subprocess.SubprocessError):
            _kernel = False
        return _kernel or None


def _self_check(fn) -> bool:
    """The built kernel must give torch.cdist's numbers exactly (a compiler that reorders sums fails)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 133, generator=g), torch.randn(70, 133, generator=g)
    ldb = -(-70 // _COLUMNS) * _COLUMNS
    bt = torch.zeros(133, ldb)
    bt[:, :70] = b.T
    out = torch.empty(9, 70, dtype=torch.float64)
    ok = fn(a.data_ptr(), None, bt.data_ptr(), out.data_ptr(), 9, 70, 133, ldb, 0) == 0
    ok = ok and torch.equal(out, torch.cdist(a, b, p=1).double())
    rows = torch.tensor([8, 0, 3], dtype=torch.int64)
    some = torch.empty(3, 70, dtype=torch.float64)
    ok = ok and fn(a.data_ptr(), rows.data_ptr(), bt.data_ptr(), some.data_ptr(), 3, 70, 133, ldb, 0) == 0
    return ok and torch.equal(some, out[rows])


def l1_backend() -> str:
    """``"c"`` when the compiled kernel is in use, else ``"torch"`` (``torch.cdist``)."""
    return "c" if _load_kernel() is not None else "torch"


def l1_distances(a: torch.Tensor, b: Optional[torch.Tensor] = None,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All L1 distances between the rows of ``a`` and the rows of ``b``: ``torch.cdist(a, b, p=1)``.

    Parameters
    ----------
    a : Tensor, shape (n, d)
    b : Tensor, shape (k, d), optional
        Default ``a`` (the result is symmetric and about half of it is computed).
    rows : Tensor of int, shape (m,), optional
        Use the rows ``a[rows]`` (in this order) without copying them: the result is (m, k).

    Returns
    -------
    Tensor, shape (n, k)
        float64 on CPU, holding exactly the values ``torch.cdist(a, b, p=1)`` computes on CPU
        (float32 for float32 inputs; float64 inputs go to ``torch.cdist`` in float64).
    """
    sym = b is None and rows is None
    b = a if b is None else b
    a = a.detach().cpu()
    b = b.detach().cpu()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (k, d) tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.int64).cpu().contiguous()
        if rows.dim() != 1 or (len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < len(a))):
            raise ValueError(f"rows must be indices of rows of a (0..{len(a) - 1}), got {rows.tolist()}")
    n, k = a.shape[0] if rows is None else len(rows), b.shape[0]
    if n == 0 or k == 0:
        return torch.zeros(n, k, dtype=torch.float64)
    kernel = _load_kernel() if a.dtype == torch.float32 and b.dtype == torch.float32 else None
    if kernel is None:
        return torch.cdist(a if rows is None else a.index_select(0, rows), b, p=1).double()
    d = a.shape[1]
    ldb = -(-k // _COLUMNS) * _COLUMNS
    bt = torch.empty(d, ldb, dtype=torch.float32)
    bt[:, :k] = b.T
    bt[:, k:] = 0.0
    a = a.contiguous()
    out = torch.empty(n, k, dtype=torch.float64)
    ia = None if rows is None else rows.data_ptr()
    if kernel(a.data_ptr(), ia, bt.data_ptr(), out.data_ptr(), n, k, d, ldb, int(sym)) != 0:
        # the kernel could not allocate its buffer
        return torch.cdist(a if rows is None else a.index_select(0, rows), b, p=1).double()
    return out
