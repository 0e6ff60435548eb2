"""Whole-model pruning time on torchvision models, beside Torch-Pruning's ``MagnitudePruner``.

ResNet50, ViT-B/16 and ConvNeXt-T (random weights, eval mode, one 224x224 input, CPU, one torch
thread): our default pruning, our Intra-Fusion (default ``OTConfig``) and ``OTConfig.data_free()`` with
``repair="data-free"``, every group at the same sparsity, beside Torch-Pruning's ``MagnitudePruner``
(l1 magnitude, the classifier left out, heads rounded as in its ViT test) at the same ratio.  Times are
CPU seconds of the fastest of ``--repeats`` calls, after one call of each method on a small model
(one-time imports); our tracing is cached (``find_groups`` once per
model, its time is its own column), Torch-Pruning's time includes building its dependency graph (it
has no cache).  The table (ratio to Torch-Pruning; target within 2x) goes to stdout and
benchmarks/results/whole_model_speed.md.

    OMP_NUM_THREADS=1 python benchmarks/whole_model_speed.py
    OMP_NUM_THREADS=1 python benchmarks/whole_model_speed.py --models resnet50 --profile intra-fusion
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package
from _bench_common import RESULTS, header, markdown_table  # noqa: E402

MODELS = ("resnet50", "vit_b_16", "convnext_tiny")
METHODS = ("default", "intra-fusion", "IF data-free")


def _output_layers(model, num_classes: int):
    import torch.nn as nn

    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def _cpu_seconds(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        out = None
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def _prune_call(ifv, model, x, sparsity, method):
    if method == "default":
        return lambda: ifv.prune(model, x, sparsity, method="default")
    if method == "intra-fusion":
        return lambda: ifv.prune(model, x, sparsity, method="intra-fusion")
    return lambda: ifv.prune(model, x, sparsity, config=ifv.OTConfig.data_free(), repair="data-free")


STEPS = ("check_arguments", "resolve", "score", "plan", "repair_sources", "work_copy", "merge", "repair", "record")


def _step_seconds(call) -> dict:
    """CPU seconds of each step of one ``prune`` call (the functions ``prune`` calls in ``pruning._steps``)."""
    from intrafusion_viz.pruning import _steps

    spent, originals = {}, {name: getattr(_steps, name) for name in STEPS}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - t
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(_steps, name, timed(name, fn))
        t = time.process_time()
        call()
        spent["total"] = time.process_time() - t
    finally:
        for name, fn in originals.items():
            setattr(_steps, name, fn)
    return spent


def _torch_pruning(name, model, x, sparsity):
    import torchvision
    import torch_pruning as tp

    m = torchvision.models.get_model(name, weights=None).eval()
    m.load_state_dict(model.state_dict())
    heads = [a.num_heads for a in m.modules() if isinstance(a, torch.nn.MultiheadAttention)]
    pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=sparsity, ignored_layers=_output_layers(m, 1000),
                                       round_to=heads[0] if heads else None)
    pruner.step()
    return m


def warm_up(sparsity: float) -> None:
    """One call of each method on a small model first: lazy imports (POT, scikit-learn) and kernels
    are one-time costs, not part of any model's time."""
    import intrafusion_viz as ifv

    torch.manual_seed(0)
    model, x = ifv.models.vgg11_bn(num_classes=10, width_mult=0.125).eval(), torch.randn(1, 3, 32, 32)
    for method in METHODS:
        _prune_call(ifv, model, x, sparsity, method)()


def run_model(name: str, sparsity: float, repeats: int, profile=None, breakdown: bool = False) -> dict:
    import torchvision

    import intrafusion_viz as ifv

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters())}
    t = time.process_time()
    ifv.find_groups(model, x)  # our tracing, cached for the calls below
    row["trace"] = time.process_time() - t
    row["tp"], tp_model = _cpu_seconds(lambda: _torch_pruning(name, model, x, sparsity), repeats)
    row["tp_params"] = sum(p.numel() for p in tp_model.parameters())
    del tp_model
    for method in METHODS:
        call = _prune_call(ifv, model, x, sparsity, method)
        row[method], res = _cpu_seconds(call, repeats)
        row[method + " params"] = res.params_after
        with torch.no_grad():
            out = res.model(x)
        assert torch.isfinite(out).all() and out.shape == (1, 1000), (name, method)
        del res
        print(f"{name} {method}: {row[method]:.2f} s", flush=True)
        if breakdown:
            row[method + " steps"] = _step_seconds(call)
        if method in (profile or ()):  # a warm call, after the timed ones
            stats = cProfile.Profile()
            stats.enable()
            call()
            stats.disable()
            text = io.StringIO()
            pstats.Stats(stats, stream=text).sort_stats("tottime").print_stats(25)
            pstats.Stats(stats, stream=text).sort_stats("cumulative").print_stats(40)
            print(text.getvalue())
    return row


def table(rows) -> str:
    columns = ["model", "params", "our trace (s)", "Torch-Pruning (s)"] + [f"{m} (s, x TP)" for m in METHODS]
    body = []
    for r in rows:
        cells = [r["model"], f"{r['params'] / 1e6:.1f} M", f"{r['trace']:.1f}", f"{r['tp']:.1f}"]
        cells += [f"{r[m]:.1f} ({r[m] / r['tp']:.2f}x)" for m in METHODS]
        body.append(cells)
    return markdown_table(columns, body)


def steps_table(rows) -> str:
    """CPU seconds per step of ``prune`` (one more call of each method)."""
    body = []
    for r in rows:
        for m in METHODS:
            spent = r.get(m + " steps")
            if spent:
                other = spent["total"] - sum(spent.get(s, 0.0) for s in STEPS)
                body.append([r["model"], m, f"{spent['total']:.2f}"] + [f"{spent.get(s, 0.0):.2f}" for s in STEPS]
                            + [f"{other:.2f}"])
    return markdown_table(["model", "method", "total"] + list(STEPS) + ["other"], body)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--breakdown", action="store_true", help="also time each step of prune() once")
    parser.add_argument("--profile", nargs="*", choices=METHODS, default=None,
                        help="print a cProfile of one more (warm) call of these methods")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warm_up(args.sparsity)
    rows = [run_model(name, args.sparsity, args.repeats, args.profile, args.breakdown) for name in args.models]
    text = table(rows) + ("\n\n" + steps_table(rows) if args.breakdown else "")
    print(text)
    command = "python benchmarks/whole_model_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "whole_model_speed.md").write_text(
        f"# Whole-model pruning time (sparsity {args.sparsity:g}, CPU seconds, 1 thread)\n\n"
        + header(command) + "\n" + text + "\n")


if __name__ == "__main__":
    main()
