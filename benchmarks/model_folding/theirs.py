"""Model Folding's own code (github marza96/ModelFolding @ 33e2818), run unmodified on CPU with glue only.

Their data-free pipeline ("DF_REPAIR" of ``vgg11_cifar10_weight_clustering.py`` and
``resnet18_cifar10_weight_clustering.py``, minus data loading and profiling) on one of this project's
models: ``numpy.random.seed(seed)``, their BatchNorm fusing, their clustering (``concat_weights``,
``RobustScaler``, ``PCA``, ``hkmeans.HKMeans``) and their approximate repair.  The glue (README.md next to
this file) changes no arithmetic of theirs: CPU instead of CUDA, an old torch exception name, and our VGG's
classifier given the name their code expects.

Their checkout is never part of the package or the tests.  Get it with::

    python benchmarks/model_folding/theirs.py fetch ../ModelFolding           # git clone + checkout 33e2818
    python benchmarks/model_folding/theirs.py check --theirs ../ModelFolding  # golden logits reproduced?

and point the scripts at it with ``--theirs PATH`` or ``$MODEL_FOLDING_SRC``.  Their code imports
``hkmeans`` (PyPI ``hartigan-kmeans`` 0.0.6, see README.md for installing it on Python >= 3.11).

    from theirs import run_theirs
    folded = run_theirs(model, "vgg11_bn", sparsity=0.5, seed=0, theirs="../ModelFolding")
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

COMMIT = "33e2818e017c250aacbff62003e83bd87236ed17"
URL = "https://github.com/marza96/ModelFolding"
ENV = "MODEL_FOLDING_SRC"
ARCHS = ("vgg11_bn", "resnet18")
_THEIR_MODULES = ("utils", "utils.utils", "utils.weight_clustering", "model", "model.vgg", "model.resnet")


def locate(theirs: Optional[str] = None) -> Path:
    """Their checkout: ``theirs``, else ``$MODEL_FOLDING_SRC``, else ``<project root>/../ModelFolding``.

    Raises ``FileNotFoundError`` saying how to fetch it when none holds ``utils/weight_clustering.py``.
    """
    root = Path(__file__).resolve().parents[2]
    candidates = [theirs] if theirs else [os.environ.get(ENV), root.parent / "ModelFolding"]
    for c in candidates:
        if c and (Path(c) / "utils" / "weight_clustering.py").is_file():
            return Path(c).resolve()
    raise FileNotFoundError(
        f"Model Folding's checkout not found (looked in {[str(c) for c in candidates if c]}); fetch it with "
        f"`python benchmarks/model_folding/theirs.py fetch DEST` (git clone {URL}, checkout {COMMIT[:7]}) "
        f"and pass --theirs DEST or set ${ENV}")


def fetch(dest: str, source: str = URL) -> Path:
    """``git clone source dest`` and check out commit 33e2818 (``source``: their URL or a local mirror)."""
    dest_path = Path(dest)
    if not (dest_path / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", source, str(dest_path)], check=True)
    subprocess.run(["git", "-C", str(dest_path), "checkout", "--quiet", COMMIT], check=True)
    return dest_path.resolve()


def checkout_commit(path: Path) -> Optional[str]:
    """The commit checked out at ``path`` (None if it is not a git work tree)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


@contextlib.contextmanager
def _cpu_glue(n_jobs: Optional[int] = None):
    """Their CUDA calls on the CPU, torch 1.6's ``ModuleAttributeError``, optionally HKMeans' ``n_jobs``.

    ``.cuda()`` of tensors and modules returns them unchanged; ``.to("cuda")`` / ``.to(device="cuda")`` and
    ``torch.zeros(..., device="cuda")`` go to the CPU.  Everything is put back on exit.
    """
    saved = {"t_cuda": torch.Tensor.cuda, "m_cuda": nn.Module.cuda, "t_to": torch.Tensor.to, "zeros": torch.zeros}
    had_mae = hasattr(torch.nn.modules.module, "ModuleAttributeError")

    def is_cuda(d):
        return (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda")

    def to(self, *args, **kwargs):
        args = tuple("cpu" if is_cuda(a) else a for a in args)
        if is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return saved["t_to"](self, *args, **kwargs)

    def zeros(*args, **kwargs):
        if is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return saved["zeros"](*args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to
    torch.zeros = zeros
    if not had_mae:  # their fuse_block catches it to skip the bn3 a BasicBlock lacks
        torch.nn.modules.module.ModuleAttributeError = AttributeError
    wc = sys.modules.get("utils.weight_clustering")
    hk = getattr(wc, "HKMeans", None)
    if wc is not None and n_jobs is not None:  # the result does not depend on n_jobs (own RandomState per run)
        def hkmeans(*a, **k):
            k["n_jobs"] = n_jobs
            return hk(*a, **k)
        wc.HKMeans = hkmeans
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.Tensor.to, torch.zeros = (
            saved["t_cuda"], saved["m_cuda"], saved["t_to"], saved["zeros"])
        if not had_mae:
            del torch.nn.modules.module.ModuleAttributeError
        if wc is not None and hk is not None:
            wc.HKMeans = hk


def load_their_code(theirs: Optional[str] = None):
    """Import their ``utils.utils``, ``model.vgg``, ``model.resnet`` from the checkout; returns the three modules."""
    path = locate(theirs)
    for name in _THEIR_MODULES:
        mod = sys.modules.get(name)
        where = [getattr(mod, "__file__", None) or ""] + list(getattr(mod, "__path__", []))  # (namespace packages)
        if mod is not None and not any(w.startswith(str(path)) for w in where):
            raise RuntimeError(f"a module named {name!r} from {where} is already imported; "
                               "run Model Folding's code in a fresh process")
    sys.path.insert(0, str(path))
    try:
        with _cpu_glue():
            mods = [importlib.import_module(n) for n in ("utils.utils", "model.vgg", "model.resnet")]
    finally:
        sys.path.remove(str(path))
    return mods


class TheirVGG(nn.Module):
    """Our VGG seen as theirs: the same ``features`` module, ``classifier`` = ``Sequential(6 x Identity, Linear)``.

    Their ``get_axis_to_perm`` treats the Linear named ``classifier.6`` (torchvision's head) as the output
    layer; the forward is ours, ``classifier(features(x).flatten(1))``, bit for bit.
    """

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.features = vgg.features
        self.classifier = nn.Sequential(*[nn.Identity() for _ in range(6)], vgg.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def run_theirs(model: nn.Module, arch: str, sparsity: float, seed: int = 0, theirs: Optional[str] = None,
               n_jobs: Optional[int] = None, quiet: bool = True) -> nn.Module:
    """Their DF_REPAIR fold of a copy of ``model``; returns the folded model (eval mode, CPU).

    Parameters
    ----------
    model : nn.Module
        ``intrafusion_viz.models.vgg11_bn(...)`` or ``resnet18(...)`` (any width, 1 or 3 input channels).
        Not modified.
    arch : {"vgg11_bn", "resnet18"}
    sparsity : float
        Fraction of channels removed per group (their ``max_ratio``; they keep ``int(n * (1 - s))``).
    seed : int
        ``numpy.random.seed(seed)`` before their clustering (HKMeans draws its run seeds from it).
    n_jobs : int, optional
        Override HKMeans' ``n_jobs=-1`` (processes; the result does not depend on it).
    quiet : bool
        Swallow their prints (HKMeans is verbose).

    Returns
    -------
    nn.Module
        For VGG a :class:`TheirVGG` (parameter ``classifier.6.*`` = our ``classifier.*``), for ResNet18 the
        model with their fused convs; both take our inputs and give logits.
    """
    import numpy as np

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    their_utils, their_vgg, their_resnet = load_their_code(theirs)
    m = copy.deepcopy(model).cpu().eval()
    if arch == "vgg11_bn":
        m = TheirVGG(m)
    out = open(os.devnull, "w") if quiet else None
    with _cpu_glue(n_jobs), contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        np.random.seed(seed)
        if arch == "vgg11_bn":
            their_utils.fuse_bnorms_vgg(m)
            folded, _ = their_vgg.merge_channel_vgg11_clustering_approx_repair(
                copy.deepcopy(m), copy.deepcopy(m).state_dict(), max_ratio=sparsity)
        else:
            their_utils.fuse_bnorms_resnet(m, [2, 2, 2, 2], override=True)
            folded = their_resnet.merge_channel_ResNet18_clustering_approx_repair(
                copy.deepcopy(m), copy.deepcopy(m).state_dict(), max_ratio=sparsity, hooks=None)
    if out is not None:
        out.close()
    return folded.eval()


def check_golden(theirs: Optional[str] = None, cells=None, n_jobs: Optional[int] = 1) -> list:
    """Rerun golden cells of ``../shared/golden/model_folding``; rows (model, s, seed, max |logit diff|, rel)."""
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root))
    from intrafusion_viz import models
    from intrafusion_viz.data import shared_path

    golden = shared_path("golden", "model_folding")
    paper = shared_path("golden", "paper")
    if golden is None or paper is None:
        raise FileNotFoundError("../shared/golden/model_folding not found (set INTRAFUSION_VIZ_SHARED)")
    all_cells = torch.load(golden / "cells.pt", weights_only=True)
    x = torch.load(paper / "inputs.pt", weights_only=True)["eval"]
    rows = []
    for c in all_cells if cells is None else [all_cells[i] for i in cells]:
        model = getattr(models, c["model"])(num_classes=10)
        model.load_state_dict(torch.load(paper / f"{c['model']}.pt", weights_only=True))
        folded = run_theirs(model.eval(), c["model"], c["sparsity"], c["seed"], theirs, n_jobs=n_jobs)
        with torch.no_grad():
            logits = folded(x)
        diff = float((logits - c["logits"]).abs().max())
        rows.append((c["model"], c["sparsity"], c["seed"], diff, diff / float(c["logits"].abs().max())))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help=f"git clone their repository and check out {COMMIT[:7]}")
    f.add_argument("dest")
    f.add_argument("--source", default=URL, help="their URL (default) or a local clone/mirror")
    c = sub.add_parser("check", help="rerun golden cells and compare logits (glue check)")
    c.add_argument("--theirs", help=f"their checkout (default ${ENV} or ../ModelFolding)")
    c.add_argument("--cells", nargs="*", type=int, help="indices into cells.pt (default: all 12)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.cmd == "fetch":
        print(fetch(args.dest, args.source))
        return
    path = locate(args.theirs)
    commit = checkout_commit(path)
    print(f"their checkout: {path} at {commit}" + ("" if commit == COMMIT else f"  (NOT {COMMIT[:7]})"))
    print("| model | s | seed | max abs logit diff | relative |\n|---|---:|---:|---:|---:|")
    for model, s, seed, diff, rel in check_golden(str(path), args.cells):
        print(f"| {model} | {s:g} | {seed} | {diff:.3g} | {rel:.3g} |", flush=True)


if __name__ == "__main__":
    main()
