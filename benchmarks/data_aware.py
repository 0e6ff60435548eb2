"""Data-aware Intra-Fusion vs data-free: activation cost and statistics repair, with <= 512 unlabeled images.

For each model (trained here, seeded) and each group alone at ``--sparsity`` (default 70%), plus the
whole model, l1 importance:

* ``default`` / ``IF`` (data-free, barycentric) / ``IF-act`` (cost on activations,
  :func:`intrafusion_viz.repair._data_aware.activation_features`);
* each followed by nothing, ``+bn`` (BatchNorm statistics re-estimated) or ``+repair`` (REPAIR-style
  per-channel mean/std correction; works on the BN-free MLP too).

The calibration batch is ``--calib`` training images (labels unused), disjoint from the test set.

    python benchmarks/data_aware.py            # 3 seeds, MNIST VGG-BN + ResNet, digits MLP + CNN
    python benchmarks/data_aware.py --quick    # 1 seed, 2,000 MNIST train images
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from intrafusion_viz.repair._data_aware import activation_features, repair  # noqa: E402
from _bench_common import (DEFAULT_MNIST, RESULTS, header, load_mnist, markdown_table, mean_spread,  # noqa: E402
                           mnist_resnet, mnist_vgg, save_figure, save_text)

PRUNINGS = ("default", "IF", "IF-act")
REPAIRS = ("", "+bn", "+repair")
VARIANTS = [p + r for p in PRUNINGS for r in REPAIRS]


def run_model(name, build, train_data, test_data, epochs, seed, sparsity, whole_sparsities, calib):
    torch.manual_seed(seed)
    model = build()
    ifv.train(model, train_data, epochs=epochs, lr=0.05, seed=seed, progress=False)
    model.eval()
    x_cal = train_data[0][-calib:]  # the last training images; the model saw them, their labels are not used
    example = x_cal[:1]
    features = activation_features(x_cal)
    base = dict(model=name, seed=seed, importance="l1")
    records = [dict(base, group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                    accuracy=ifv.accuracy(model, test_data))]
    groups = ifv.find_groups(model, example)
    targets = [(g.index, g.name, f"G{g.paper_index}", [g.index], sparsity) for g in groups]
    targets += [(-1, "all", "", None, s) for s in whole_sparsities]
    for index, gname, paper, selection, s in targets:
        for pruning in PRUNINGS:
            kwargs = dict(method="default") if pruning == "default" else (
                dict(features=features) if pruning == "IF-act" else {})
            res = ifv.prune(model, example, sparsity=s, groups=selection, **kwargs)
            for fix in REPAIRS:
                pruned = res.model if not fix else repair(res, model, x_cal, mode=fix[1:])
                records.append(dict(base, group=index, group_name=gname, paper_group=paper, sparsity=s,
                                    method=pruning + fix, accuracy=ifv.accuracy(pruned, test_data)))
    return records


def tables(df) -> str:
    out = []
    for name, part in df.groupby("model", sort=False):
        orig = part[part.method == "original"].accuracy
        out.append(f"\n### {name} (original {mean_spread(orig)} %, {part.seed.nunique()} seeds, l1)\n")
        rows = []
        pruned = part[part.method != "original"]
        for (g, s), cell in pruned.groupby(["group", "sparsity"], sort=True):
            first = cell.iloc[0]
            label = "whole model" if g == -1 else f"{g} {first.group_name} ({first.paper_group})"
            rows.append([label, f"{s:.0%}"] + [mean_spread(cell[cell.method == v].accuracy) for v in VARIANTS])
        rows.sort(key=lambda r: (r[0] == "whole model", r[0], r[1]))
        out.append(markdown_table(["group", "sparsity", *VARIANTS], rows))
        # Distance to the unpruned model, per seed, for the single-group cases (the target).
        single = pruned[pruned.group >= 0].merge(
            part[part.method == "original"][["seed", "accuracy"]].rename(columns={"accuracy": "orig"}), on="seed")
        single["drop"] = single["orig"] - single["accuracy"]
        worst = single.groupby(["method", "seed"])["drop"].max().groupby("method")
        mean = single.groupby(["method", "seed"])["drop"].mean().groupby("method")
        out.append(f"\n{name}: single-group drop vs unpruned (points; mean over groups / worst group, "
                   "mean over seeds)\n")
        out.append(markdown_table(["variant", "mean drop", "worst-group drop", "groups within 1.5 pts"],
                                  [[v, f"{mean.mean()[v]:.2f}", f"{worst.mean()[v]:.2f}",
                                    f"{(single[single.method == v]['drop'] <= 1.5).mean():.0%}"] for v in VARIANTS]))
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.7, help="single-group sparsity")
    parser.add_argument("--whole", type=float, nargs="+", default=[0.5, 0.7], help="whole-model sparsities")
    parser.add_argument("--calib", type=int, default=512, help="unlabeled calibration images (<= 512)")
    parser.add_argument("--mnist-root", default=str(DEFAULT_MNIST))
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--mnist-epochs", type=int, default=3)
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--no-mnist", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.n_train, args.mnist_epochs, args.digits_epochs = [0], 2000, 2, 10
    if not 1 <= args.calib <= 512:
        parser.error("--calib must be in 1..512")
    import pandas as pd
    from tqdm.auto import tqdm

    start = time.time()
    digits_img = ifv.data.load_digits_tensors(seed=0)
    digits_flat = ifv.data.load_digits_tensors(seed=0, flatten=True)
    specs = [("digits-mlp (no BN)", ifv.models.MLP, (digits_flat.x_train, digits_flat.y_train),
              (digits_flat.x_test, digits_flat.y_test), args.digits_epochs),
             ("digits-cnn", ifv.models.SmallCNN, (digits_img.x_train, digits_img.y_train),
              (digits_img.x_test, digits_img.y_test), args.digits_epochs)]
    if not args.no_mnist:
        train, test = load_mnist(args.mnist_root, args.n_train, args.n_test)
        specs += [("mnist-vgg-bn", lambda: mnist_vgg(16), train, test, args.mnist_epochs),
                  ("mnist-resnet", lambda: mnist_resnet(8), train, test, args.mnist_epochs)]
    records = []
    for spec in tqdm(specs, desc="models"):
        for seed in tqdm(args.seeds, desc=spec[0], leave=False):
            records += run_model(*spec, seed=seed, sparsity=args.sparsity, whole_sparsities=args.whole,
                                 calib=args.calib)
    df = pd.DataFrame(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "data_aware.csv", index=False)
    command = "python benchmarks/data_aware.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ("## Data-aware Intra-Fusion (activation cost, BN re-estimation, REPAIR)\n\n" + header(command.strip())
            + f"- calibration: {args.calib} unlabeled training images; single-group sparsity {args.sparsity:.0%}\n"
            + f"- wall time: {time.time() - start:.0f} s\n" + tables(df) + "\n")
    save_text("data_aware.md", text, out)
    for name, part in df.groupby("model", sort=False):
        fig = ifv.figures.sweep_bars(part, title=f"{name}: accuracy drop per group at {args.sparsity:.0%}")
        save_figure(fig, "data_aware_" + name.split(" ")[0], out)
    print(text)
    return df


if __name__ == "__main__":
    main()
