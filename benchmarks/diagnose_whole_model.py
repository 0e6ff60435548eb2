"""Per-layer drift of whole-model merges on a converged reference model: where the accuracy goes.

Prints, per layer in forward order, the relative error and std ratio of the merged network's channels
against what they stand for in the original (``ifv.layer_drift``), for several methods and repairs, and
writes the figures to benchmarks/results/diagnose_<arch>_s<seed>_<method>_<sparsity>.html.

    python benchmarks/diagnose_whole_model.py --arch vgg11_bn --seed 0 --sparsity 0.3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import save_figure  # noqa: E402


def main(argv=None):
    import intrafusion_viz as ifv
    from intrafusion_viz.figures._diagnostics import drift_figure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=["IF-bary", "default", "fold"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    methods = {"default": ("default", "barycentric", False), "IF-bary": ("intra-fusion", "barycentric", False),
               "IF-paper": ("intra-fusion", "paper", False), "fold": ("fold", "barycentric", False),
               "IF-bary-seq": ("intra-fusion", "barycentric", True), "IF-free": ("intra-fusion", "free", False)}
    (x_train, _), (x_test, y_test) = ifv.reference_data()
    model = ifv.reference_model(args.arch, args.seed, train_if_missing=False)
    batch, probe = x_train[:512], x_test[:256]
    for label in args.methods:
        method, fusion, seq = methods[label]
        res = ifv.prune(model, probe[:1], args.sparsity, method=method, repair="none",
                        config=ifv.OTConfig(target_mass="free") if fusion == "free" else ifv.OTConfig(fusion=fusion),
                        sequential=seq)
        nets = {"no repair": res.model, "data-free": ifv.repair(res, model, mode="data-free"),
                "bn (512 images)": ifv.repair(res, model, batch, mode="bn")}
        variants = {}
        for name, net in nets.items():
            rows = ifv.layer_drift(model, res, probe, model=net)
            variants[name] = rows
            acc = ifv.accuracy(net, (x_test, y_test))
            print(f"\n{args.arch} s{args.seed} {label} {args.sparsity:.0%} {name}: accuracy {acc:.2f} %")
            print("| layer | rel. error | std ratio | mean shift (sd) | corr |")
            print("|---|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['layer']} | {r['rel_error']:.3f} | {r['std_ratio']:.3f} | {r['mean_shift']:.3f} | "
                      f"{r['corr']:.3f} |" + (f" top-1 agreement {r['agreement']:.1f} %" if "agreement" in r else ""))
        fig = drift_figure(variants, model_name=f"{args.arch} (MNIST, seed {args.seed})", method=label,
                           importance="l1", sparsity=args.sparsity)
        save_figure(fig, f"diagnose_{args.arch}_s{args.seed}_{label}_{int(100 * args.sparsity)}", width=1400, height=650)  # HTML (+ PNG)


if __name__ == "__main__":
    main()
