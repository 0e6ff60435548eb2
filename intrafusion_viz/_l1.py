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
#define MA 4
#define NC 64
/* out[i * k + j] = sum_t |a[i, t] - b[j, t]|, summed in float32 in the order t = 0, 1, ..., d - 1,
   which is what torch.cdist(p=1) computes on CPU, bit for bit.  Vectorised across pairs, not along t:
   bt is b transposed, (d, ldb), ldb a multiple of NC, zero-padded.  sym: a == b (k == n); only the
   column strips from the diagonal on are computed and the rest mirrored. */
void ifv_l1_cdist(const float *a, const float *bt, double *out, long n, long k, long d, long ldb, int sym) {
    for (long i0 = 0; i0 < n; i0 += MA) {
        const float *rows[MA];
        for (int r = 0; r < MA; r++) rows[r] = a + (i0 + r < n ? i0 + r : i0) * d;
        for (long j0 = sym ? (i0 / NC) * NC : 0; j0 < k; j0 += NC) {
            float acc[MA][NC];
            for (int r = 0; r < MA; r++)
                for (int l = 0; l < NC; l++) acc[r][l] = 0.0f;
            for (long t = 0; t < d; t++) {
                const float *bp = bt + t * ldb + j0;
                for (int r = 0; r < MA; r++) {
                    float x = rows[r][t];
                    for (int l = 0; l < NC; l++) acc[r][l] += fabsf(x - bp[l]);
                }
            }
            for (int r = 0; r < MA && i0 + r < n; r++)
                for (int l = 0; l < NC && j0 + l < k; l++) {
                    out[(i0 + r) * k + j0 + l] = acc[r][l];
                    if (sym) out[(j0 + l) * k + i0 + r] = acc[r][l];
                }
        }
    }
}
"""

_COLUMNS = 64  # NC in the kernel
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
        key = hashlib.sha256((_SOURCE + _cpu_tag()).encode()).hexdigest()[:16]
        cache = Path(os.environ.get("IFV_CACHE_DIR") or Path.home() / ".cache" / "intrafusion_viz")
        lib = cache / f"l1_{key}.so"
        try:
            if not lib.is_file():
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=cache) as tmp:
                    src = Path(tmp) / "l1.c"
                    src.write_text(_SOURCE)
                    built = Path(tmp) / "l1.so"
                    flags = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"]
                    try:  # 512-bit vectors where the CPU has them: about 1.2x faster
                        subprocess.run([cc, *flags, "-mprefer-vector-width=512", str(src), "-o", str(built)],
                                       check=True, capture_output=True, timeout=120)
                    except subprocess.CalledProcessError:
                        subprocess.run([cc, *flags, str(src), "-o", str(built)], check=True,
                                       capture_output=True, timeout=120)
                    os.replace(built, lib)  # atomic: a concurrent process sees all or nothing
            fn = ctypes.CDLL(str(lib)).ifv_l1_cdist
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long, ctypes.c_long,
                           ctypes.c_long, ctypes.c_long, ctypes.c_int]
            _kernel = fn
        except (OSError, subprocess.SubprocessError):
            _kernel = False
        return _kernel or None


def l1_backend() -> str:
    """``"c"`` when the compiled kernel is in use, else ``"torch"`` (``torch.cdist``)."""
    return "c" if _load_kernel() is not None else "torch"


def l1_distances(a: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All L1 distances between the rows of ``a`` and the rows of ``b``: ``torch.cdist(a, b, p=1)``.

    Parameters
    ----------
    a : Tensor, shape (n, d)
    b : Tensor, shape (k, d), optional
        Default ``a`` (the result is symmetric and about half of it is computed).

    Returns
    -------
    Tensor, shape (n, k)
        float64 on CPU, holding exactly the values ``torch.cdist(a, b, p=1)`` computes on CPU
        (float32 for float32 inputs; float64 inputs go to ``torch.cdist`` in float64).
    """
    sym = b is None
    b = a if sym else b
    a = a.detach().cpu()
    b = b.detach().cpu()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (n, d) and (k, d) tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, k = a.shape[0], b.shape[0]
    if n == 0 or k == 0:
        return torch.zeros(n, k, dtype=torch.float64)
    kernel = _load_kernel() if a.dtype == torch.float32 and b.dtype == torch.float32 else None
    if kernel is None:
        return torch.cdist(a, b, p=1).double()
    d = a.shape[1]
    ldb = -(-k // _COLUMNS) * _COLUMNS
    bt = torch.zeros(d, ldb, dtype=torch.float32)
    bt[:, :k] = b.T
    a = a.contiguous()
    out = torch.empty(n, k, dtype=torch.float64)
    kernel(a.data_ptr(), bt.data_ptr(), out.data_ptr(), n, k, d, ldb, int(sym))
    return out
