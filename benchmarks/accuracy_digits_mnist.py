"""Accuracy without fine-tuning: default pruning vs Intra-Fusion (paper normalisation and barycentric).

Models are trained here (seeded): an MLP and a small CNN on scikit-learn digits, a VGG-style CNN with
BatchNorm and a small ResNet on MNIST (8,000 train / 2,000 test images split from MNIST's test set at
``--mnist-root``).  Every group alone and the whole model are pruned at each sparsity with l1, Taylor
and random importance.  Prints markdown tables (mean ± std over seeds) and writes records, tables and
figures into ``benchmarks/results/``.

    python benchmarks/accuracy_digits_mnist.py            # 3 seeds, sparsity 0.3..0.8
    python benchmarks/accuracy_digits_mnist.py --quick    # 1 seed, fewer sparsities, smaller data
    python benchmarks/accuracy_digits_mnist.py --workers 2               # cells on a 2-process Dask LocalCluster
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import (DEFAULT_MNIST, METHODS, RESULTS, add_executor_options, executor_from_args,  # noqa: E402
                           header, load_mnist, markdown_table, mean_spread, mnist_resnet, mnist_vgg, save_figure,
                           save_text)

IMPORTANCES = ("l1", "taylor", "random")


def model_specs(args):
    """(name, build(), (x_train, y_train), (x_test, y_test), epochs, lr)."""
    specs = []
    digits_img = ifv.data.load_digits_tensors(seed=0)
    digits_flat = ifv.data.load_digits_tensors(seed=0, flatten=True)
    specs.append(("digits-mlp", lambda: ifv.models.MLP(), (digits_flat.x_train, digits_flat.y_train),
                  (digits_flat.x_test, digits_flat.y_test), args.digits_epochs, 0.05))
    specs.append(("digits-cnn", lambda: ifv.models.SmallCNN(), (digits_img.x_train, digits_img.y_train),
                  (digits_img.x_test, digits_img.y_test), args.digits_epochs, 0.05))
    if not args.no_mnist:
        train, test = load_mnist(args.mnist_root, args.n_train, args.n_test)
        specs.append(("mnist-vgg-bn", lambda: mnist_vgg(16), train, test, args.mnist_epochs, 0.05))
        specs.append(("mnist-resnet", lambda: mnist_resnet(8), train, test, args.mnist_epochs, 0.05))
    return specs


def sweep_model(name, build, train_data, test_data, epochs, lr, seed, sparsities, group_sparsities, executor=None):
    """Tidy records for one trained model: original, then every (group or whole) x sparsity x importance x method."""
    torch.manual_seed(seed)
    model = build()
    ifv.train(model, train_data, epochs=epochs, lr=lr, seed=seed, progress=False)
    model.eval()
    example = train_data[0][:1]
    taylor_batch = (train_data[0][:256], train_data[1][:256])
    base = dict(model=name, seed=seed)
    records = [dict(base, group=-1, group_name="all", paper_group="", sparsity=0.0, method="original",
                    importance="")]
    cells = [ifv.sweeps.SweepCell(None, 0.0, "original")]
    groups = ifv.find_groups(model, example)
    targets = [(g.index, g.name, f"G{g.paper_index}", g.index, group_sparsities) for g in groups]
    targets.append((-1, "all", "", None, sparsities))
    for index, gname, paper, selection, target_sparsities in targets:
        for s in target_sparsities:
            for imp in IMPORTANCES:
                for label, method, fusion in METHODS:
                    cells.append(ifv.sweeps.SweepCell(selection, s, method, imp, ifv.OTConfig(fusion=fusion), seed))
                    records.append(dict(base, group=index, group_name=gname, paper_group=paper, sparsity=s,
                                        method=label, importance=imp))
    outcomes = ifv.sweeps.evaluate_cells(model, test_data, example, cells, batch=taylor_batch, executor=executor,
                                         desc=f"{name} seed {seed}")
    for record, outcome in zip(records, outcomes):
        if not outcome.ok:
            raise RuntimeError(f"{name} seed {seed}: cell {record} failed") from outcome.error
        record["accuracy"] = outcome.value
    return records


def tables(df) -> str:
    out = []
    labels = [m[0] for m in METHODS]
    for name, part in df.groupby("model", sort=False):
        orig = part[part.method == "original"].accuracy
        out.append(f"\n### {name}: whole model (original {mean_spread(orig)} %, {part.seed.nunique()} seeds)\n")
        whole = part[part.group == -1]
        rows = []
        for (s, imp), cell in whole[whole.method != "original"].groupby(["sparsity", "importance"], sort=True):
            rows.append([f"{s:.0%}", imp] + [mean_spread(cell[cell.method == m].accuracy) for m in labels])
        out.append(markdown_table(["sparsity", "importance", *labels], rows))
        out.append(f"\n{name}: each group alone, l1 importance (accuracy %, mean ± std over seeds)\n")
        per = part[(part.group >= 0) & (part.importance == "l1")]
        rows = []
        for (g, s), cell in per.groupby(["group", "sparsity"], sort=True):
            first = cell.iloc[0]
            rows.append([f"{g} {first.group_name} ({first.paper_group})", f"{s:.0%}"]
                        + [mean_spread(cell[cell.method == m].accuracy) for m in labels])
        out.append(markdown_table(["group", "sparsity", *labels], rows))
    return "\n".join(out)


def figures(df, out):
    paths = []
    for name, part in df.groupby("model", sort=False):
        for imp in IMPORTANCES:
            recs = part[(part.importance == imp) | (part.method == "original")]
            fig = ifv.figures.accuracy_vs_sparsity(recs[(recs.group == -1)],
                                                   title=f"{name}: whole model, {imp} importance")
            paths += save_figure(fig, f"accuracy_{name}_whole_{imp}", out)
        recs = part[(part.importance == "l1") | (part.method == "original")]
        paths += save_figure(ifv.figures.sweep_heatmap(recs, title=f"{name}: accuracy drop per group (l1)"),
                             f"accuracy_{name}_per_group_l1", out)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, sparsities 0.3/0.5/0.7 (groups 0.5), 2,000 MNIST train images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--group-sparsities", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        help="sparsities for each group alone (the whole model uses --sparsities)")
    parser.add_argument("--mnist-root", default=str(DEFAULT_MNIST))
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--mnist-epochs", type=int, default=3)
    parser.add_argument("--no-mnist", action="store_true", help="digits models only")
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these (digits-mlp digits-cnn mnist-vgg-bn mnist-resnet)")
    parser.add_argument("--out", default=str(RESULTS))
    add_executor_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.sparsities, args.group_sparsities = [0], [0.3, 0.5, 0.7], [0.5]
        args.n_train, args.mnist_epochs, args.digits_epochs = 2000, 2, 10
    import pandas as pd
    from tqdm.auto import tqdm

    start = time.time()
    records = []
    specs = [spec for spec in model_specs(args) if args.models is None or spec[0] in args.models]
    with executor_from_args(args) as executor:
        for spec in tqdm(specs, desc="models"):
            for seed in tqdm(args.seeds, desc=spec[0], leave=False):
                records += sweep_model(*spec, seed=seed, sparsities=args.sparsities,
                                       group_sparsities=args.group_sparsities, executor=executor)
    df = pd.DataFrame(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "accuracy_digits_mnist.csv", index=False)
    command = "python benchmarks/accuracy_digits_mnist.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = ("## Accuracy without fine-tuning (digits, MNIST)\n\n" + header(command.strip())
            + f"- wall time: {time.time() - start:.0f} s\n" + tables(df) + "\n")
    save_text("accuracy_digits_mnist.md", text, out)
    figures(df, out)
    print(text)
    return df


if __name__ == "__main__":
    main()
