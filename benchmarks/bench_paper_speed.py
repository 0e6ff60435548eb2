"""Speed at the paper's own settings (p = 1): one group, ``OTConfig.paper()``, beside the authors' code.

For VGG11-BN and ResNet18 (CIFAR widths) groups G1-G3 at 30/50/70 %, one CPU thread, it times

* ``ours``: ``ifv.prune(model, x, {group: s}, method="intra-fusion", config=ifv.OTConfig.paper())``
  with the model's groups already traced (warm; a second call on the same model), and ``ours cold``:
  the first call on a fresh model object (tracing included, as the authors' code does every call);
* ``cost``: our p = 1 cost (``ifv.cost_matrix``, the same numbers) and ``torch.cdist(p=1)`` alone on
  the same n x k matrices the authors' cost compares;
* ``authors``: ``copy.deepcopy(model)`` then the authors' ``prune()`` on it, as their ``main.py`` does per
  cell (github alexandertheus/Intra-Fusion, 82a2871, unmodified, CPU, their ``OptimalTransport(p=1)``;
  their code re-traces the model every call), when a checkout is given (``--authors PATH`` or
  ``$IFV_AUTHORS_CODE``).  Their ``torch_pruning`` fork is copied into a temporary folder and imported
  as ``authors_tp``, beside the real Torch-Pruning; nothing of it enters the package or the tests (a
  checkout whose fork is already renamed ``authors_tp/`` works too).
  Without a checkout, their recorded times (0.31-2.06 s per Intra-Fusion cell) are printed instead.

What each side's timed region covers (the same result: a new pruned model, the caller's untouched):

* authors: ``copy.deepcopy`` of the whole model; building their pruner, which traces the model
  (``DependencyGraph``) and folds *every* BatchNorm of the copy (without eps); importance on the
  folded weights; their cost (``torch.cdist(p=1)`` on all n x k pairs) and ``ot.emd``; cutting the
  group's layers.  Their pruned model keeps the folded BatchNorms as identities.
* ours, warm: a private copy of the model (every tensor the group does not change is cloned, the
  tensors the surgery replaces are shared until it computes their pruned shape from them); the group's own
  BatchNorm fold (exact, with eps) for channel vectors, importance and merge; importance; the cost
  of the n - k dropped channels (the only rows an exact plan with uniform masses reads; the rest is
  computed if ``GroupResult.cost`` is read); EMD; the merge; the BatchNorms given back their scale
  and statistics (the result is an ordinary network); the checks of the inputs.  Not included: the
  trace, which is cached on the model object after the first call (the authors re-trace every call).
* ours, cold: the same on a model object never seen before, so the trace is included, as theirs.

Before timing, one untimed call of each side on a throwaway copy takes one-time costs (lazy imports,
building the L1 kernel) out of the first cell.  ``--breakdown`` prints where one warm call of ours
spends its time, phase by phase.

Times are the best of ``--repeats`` runs, CPU time of this process (``time.process_time``; with one
thread it is the single-thread time, and robust on a shared machine) and wall time.  Weights are the
golden ones from ``shared/golden/paper`` when present, else random with randomised BatchNorms.

    python benchmarks/bench_paper_speed.py --authors /path/to/Intra-Fusion
    python benchmarks/bench_paper_speed.py --breakdown
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = [Path(os.environ.get("INTRAFUSION_VIZ_SHARED", ROOT.parent / "shared")) / "golden" / "paper"]


def load_model(arch: str):
    model = getattr(ifv.models, arch)(num_classes=10)
    for folder in GOLDEN:
        if (folder / f"{arch}.pt").is_file():
            model.load_state_dict(torch.load(folder / f"{arch}.pt"))
            return model.eval(), "golden"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval(), "random"


def timed(fn, repeats: int, setup=None):
    """(best CPU seconds, best wall seconds, last result) of ``fn(setup())`` (or ``fn()``), setup untimed."""
    cpu, wall, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        arg = setup() if setup else None
        c, w = time.process_time(), time.perf_counter()
        out = fn(arg) if setup else fn()
        cpu, wall = min(cpu, time.process_time() - c), min(wall, time.perf_counter() - w)
    return cpu, wall, out


def import_authors(path: Path):
    """The authors' prune() and OptimalTransport, their Torch-Pruning fork imported as ``authors_tp``."""
    tmp = Path(tempfile.mkdtemp(prefix="ifv_authors_"))
    fork = path / "torch_pruning" if (path / "torch_pruning").is_dir() else path / "authors_tp"  # as cloned, or renamed
    shutil.copytree(fork, tmp / "authors_tp")
    source = (path / "prune.py").read_text().replace("import torch_pruning as tp", "import authors_tp as tp")
    (tmp / "authors_prune.py").write_text(source)
    sys.path.insert(0, str(tmp))
    tp = importlib.import_module("authors_tp")
    prune = importlib.import_module("authors_prune").prune
    from authors_tp.optimal_transport import OptimalTransport

    return prune, OptimalTransport(p=1, gpu_id=-1), tp


def cost_times(model, group, kept, repeats):
    """CPU seconds of torch.cdist(p=1) on the authors' n x k matrices, and of our cost on the same vectors."""
    features = ifv.channel_features(model, group, bias=False)
    v = features / features.norm(dim=1, keepdim=True)
    targets = v[kept].contiguous()
    theirs = timed(lambda: torch.cdist(v, targets, p=1), repeats)[0]
    ours = timed(lambda: ifv.cost_matrix(features, kept, ifv.OTConfig.paper()), repeats)[0]
    return theirs, ours


PHASES = (  # (label, module, attribute): top-level steps of one prune() call, timed inclusively
    ("channel vectors (+ folds)", "intrafusion_viz.pruning._steps", "channel_features"),
    ("importance", "intrafusion_viz.pruning._steps", "folded_magnitude_importances"),
    ("cost: L1 kernel", "intrafusion_viz.plan._l1", "l1_distances"),
    ("cost: rest", "intrafusion_viz.pruning._steps", "dropped_rows_cost"),
    ("EMD", "intrafusion_viz.pruning._steps", "transport_plan"),
    ("model copy", "intrafusion_viz.pruning._steps", "private_copy"),
    ("BatchNorm restore", "intrafusion_viz.pruning._steps", "restore_folded_batchnorms"),
    ("merge + cut", "intrafusion_viz.pruning._steps", "apply_merge"),
)


def breakdown(model, x, cell, cfg, repeats: int) -> dict:
    """CPU seconds of each phase of the fastest of ``repeats`` warm calls (nested phases subtracted)."""
    spent: dict = {}
    originals = []
    for label, module, attr in PHASES:
        mod = importlib.import_module(module)
        fn = getattr(mod, attr)
        originals.append((mod, attr, fn))

        def timed_fn(*a, __fn=fn, __label=label, **k):
            c = time.process_time()
            try:
                return __fn(*a, **k)
            finally:
                spent[__label] = spent.get(__label, 0.0) + time.process_time() - c

        setattr(mod, attr, timed_fn)
    best = None
    try:
        ifv.prune(model, x, cell, config=cfg)
        for _ in range(repeats):
            spent.clear()
            c = time.process_time()
            ifv.prune(model, x, cell, config=cfg)
            total = time.process_time() - c
            if best is None or total < best["total"]:
                best = dict(spent, total=total)
    finally:
        for mod, attr, fn in originals:
            setattr(mod, attr, fn)
    best["cost: rest"] = best.get("cost: rest", 0.0) - best.get("cost: L1 kernel", 0.0)
    inner = best.get("model copy", 0.0) + best.get("BatchNorm restore", 0.0)
    best["merge + cut"] = best.get("merge + cut", 0.0) - inner
    best["other (checks, tables, Python)"] = best["total"] - sum(v for k, v in best.items() if k != "total")
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors", default=os.environ.get("IFV_AUTHORS_CODE"),
                        help="checkout of alexandertheus/Intra-Fusion (82a2871) to time side by side")
    parser.add_argument("--models", nargs="+", default=["vgg11_bn", "resnet18"])
    parser.add_argument("--groups", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true",
                        help="print where one warm call of ours spends its time, phase by phase, instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    authors = import_authors(Path(args.authors)) if args.authors else None
    from intrafusion_viz.plan._l1 import l1_backend

    print(f"torch {torch.__version__}, 1 thread, L1 kernel: {l1_backend()}, "
          f"authors' code: {args.authors or 'not given (their recorded 0.31-2.06 s per IF cell)'}")
    x = torch.randn(1, 3, 32, 32)
    cfg = ifv.OTConfig.paper()
    warm, _ = load_model(args.models[0])  # one-time costs (imports, the L1 kernel) out of the timings
    warm_group = next(g for g in ifv.find_groups(warm, x) if g.paper_index == args.groups[0])
    ifv.prune(copy.deepcopy(warm), x, {warm_group.index: args.sparsities[0]}, config=cfg)
    if authors:
        authors[0](copy.deepcopy(warm), None, x, 10, "l1", -1, sparsity=args.sparsities[0],
                   optimal_transport=authors[1], group_idxs=[args.groups[0]])
    if args.breakdown:
        rows = []
        for arch in args.models:
            model, _ = load_model(arch)
            groups = {g.paper_index: g for g in ifv.find_groups(model, x)}
            for p in args.groups:
                for s in args.sparsities:
                    parts = breakdown(model, x, {groups[p].index: s}, cfg, args.repeats)
                    labels = [label for label, _, _ in PHASES] + ["other (checks, tables, Python)"]
                    rows.append([arch, f"G{p}", f"{s:.0%}", f"{1000 * parts['total']:.1f}"]
                                + [f"{1000 * parts.get(label, 0.0):.1f}" for label in labels])
                    print(" | ".join(rows[-1]), flush=True)
        print()
        print(markdown_table(["model", "group", "sparsity", "total ms"]
                             + [f"{label} ms" for label, _, _ in PHASES] + ["other ms"], rows))
        return
    rows, summary = [], {"ratio": [], "ratio_cold": [], "vgg_g1": []}
    for arch in args.models:
        model, weights = load_model(arch)
        groups = {g.paper_index: g for g in ifv.find_groups(model, x)}
        for p in args.groups:
            g = groups[p]
            for s in args.sparsities:
                cell = {g.index: s}
                fresh = copy.deepcopy(model)
                c0 = time.process_time()
                ifv.prune(fresh, x, cell, config=cfg)  # cold: traces this model object first
                cold = time.process_time() - c0
                cpu, wall, res = timed(lambda: ifv.prune(model, x, cell, config=cfg), args.repeats)
                cd, ours_cost = cost_times(model, g, res.groups[0].kept, args.repeats)
                row = [arch, f"G{p}", g.name, f"{s:.0%}", g.size, res.groups[0].k, f"{cpu:.3f}", f"{wall:.3f}",
                       f"{cold:.3f}", f"{ours_cost:.3f}", f"{cd:.3f}", f"{cd / ours_cost:.1f}x"]
                if authors:
                    a_prune, a_ot, _ = authors
                    # their main.py deep-copies the model and prunes the copy in place, per cell; ours
                    # copies inside prune(): both timings include the copy
                    a_cpu = timed(lambda: a_prune(copy.deepcopy(model), None, x, 10, "l1", -1, sparsity=s,
                                                  optimal_transport=a_ot, group_idxs=[p]), args.repeats)[0]
                    row += [f"{a_cpu:.3f}", f"{a_cpu / cpu:.1f}x", f"{a_cpu / cold:.1f}x"]
                    summary["ratio"].append(a_cpu / cpu)
                    summary["ratio_cold"].append(a_cpu / cold)
                if arch == "vgg11_bn" and p == 1:
                    summary["vgg_g1"].append(cpu)
                rows.append(row)
                print(" | ".join(map(str, row)), flush=True)
    head = ["model", "group", "root", "sparsity", "n", "k", "ours CPU s", "ours wall s", "ours cold CPU s",
            "our cost CPU s", "torch.cdist(p=1) CPU s", "cdist / our cost"]
    if authors:
        head += ["authors CPU s", "authors / ours", "authors / ours cold"]
    print()
    print(markdown_table(head, rows))
    print()
    if summary["vgg_g1"]:
        print(f"VGG11-BN G1 (ours, warm): {min(summary['vgg_g1']):.3f}-{max(summary['vgg_g1']):.3f} s "
              f"(target <= 0.15 s)")
    if summary["ratio"]:
        for key, what in (("ratio", "warm"), ("ratio_cold", "cold")):
            r = sorted(summary[key])
            median = r[len(r) // 2] if len(r) % 2 else (r[len(r) // 2 - 1] + r[len(r) // 2]) / 2
            print(f"authors / ours ({what}): median {median:.1f}x, min {r[0]:.1f}x, max {r[-1]:.1f}x, "
                  f"{sum(x >= 10 for x in r)}/{len(r)} cells >= 10x (target: >= 10x)")


if __name__ == "__main__":
    main()
