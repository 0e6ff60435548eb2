"""Recovery with fine-tuning (the paper's Table 1 flow) on Fashion-MNIST: prune the whole model, fine-tune, compare.

Question: after pruning a whole VGG11-BN, does merging (Intra-Fusion, the paper's preset; the data-free plan;
Model Folding's fold) need fewer fine-tuning epochs than default pruning to reach default pruning's final
accuracy, and where is each after the same number of epochs?

Per seed: a VGG11-BN (``--width`` x VGG's channels, 1-channel 32x32 inputs) is trained on Fashion-MNIST
(``--train-epochs`` epochs of ``--epoch-size`` images), or ``--model reference`` loads
``ifv.reference_model("vgg11_bn", dataset="fashion-mnist")`` where that exists; then for each sparsity
(fraction of every group's channels removed) and method the whole model is pruned (l1 importance) and
fine-tuned with :func:`intrafusion_viz.finetune` for ``--epochs`` epochs (SGD, cosine, ``--epoch-size``
images an epoch), accuracy measured on ``--n-test`` test images after every epoch.  Methods:

* ``default``: ``prune(method="default")`` (Torch-Pruning's pruning, no repair);
* ``IF (paper)``: ``prune(method="intra-fusion", config=OTConfig.paper())``;
* ``IF (data-free)``: ``prune(method="intra-fusion", config=OTConfig.data_free(), repair="data-free")``;
* ``fold``: ``prune(method="fold")`` (Model Folding's clusters, data-free repair).

Resumable: the trained models, each fine-tuning's checkpoint folder and ``records.csv`` live in ``--out``;
a rerun skips what is done.  Prints a table (epochs saved to reach default pruning's final accuracy; final
accuracy at equal epochs) and writes ``finetune_recovery.md`` and the figure ``finetune_recovery.html``.

    python benchmarks/finetune_recovery.py                               # 1 seed, about 10 min on a laptop CPU
    python benchmarks/finetune_recovery.py --seeds 0 1 2 --sparsities 0.5 0.7
    python benchmarks/finetune_recovery.py --tiny                        # seconds, for tests (digits)
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import RESULTS, markdown_table  # noqa: E402

METHODS = ("default", "IF (paper)", "IF (data-free)", "fold")
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


def shared_fashion_root() -> Path:
    """``$INTRAFUSION_VIZ_SHARED/data/fashion-mnist`` or ``<project root>/../shared/data/fashion-mnist``."""
    env = os.environ.get("INTRAFUSION_VIZ_SHARED")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return base / "data" / "fashion-mnist"


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_tensors(root: Path, n_test: int):
    """``((x_train, y_train), (x_test, y_test))``: normalised, edge-padded to 32x32 (VGG's five pools)."""
    files = {split: (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        sys.exit(f"Fashion-MNIST IDX files missing: {', '.join(missing)}. Pass --data-root DIR (the folder "
                 "torchvision.datasets.FashionMNIST downloads into, raw/ files) or set INTRAFUSION_VIZ_SHARED.")

    def load(split, limit=None):
        images, labels = (_idx(p) for p in files[split])
        x = torch.from_numpy(images[:limit].astype(np.float32) / 255.0).unsqueeze(1)
        x = F.pad((x - FASHION_MEAN) / FASHION_STD, (2, 2, 2, 2), mode="replicate")
        return x, torch.from_numpy(labels[:limit].astype(np.int64))

    return load("train"), load("test", n_test)


def digits_tensors():
    data = ifv.data.load_digits_tensors(seed=0)
    return (data.x_train, data.y_train), (data.x_test, data.y_test)


def build(args) -> torch.nn.Module:
    if args.tiny:
        return ifv.models.SmallCNN()
    return ifv.models.vgg11_bn(num_classes=10, width_mult=args.width, in_channels=1)


def base_model(args, seed, train, test, out: Path):
    """The trained model to prune: the reference model, or ours trained (and cached) here."""
    if args.model == "reference":
        try:
            return ifv.reference_model("vgg11_bn", seed=seed, dataset="fashion-mnist")
        except TypeError:
            sys.exit("this version's ifv.reference_model has no dataset= argument yet: use --model own")
    torch.manual_seed(seed)
    model = build(args)
    tuned = ifv.finetune(model, train, epochs=args.train_epochs, eval_data=test, lr=0.05,
                         epoch_size=args.epoch_size, seed=seed, checkpoint_dir=out / f"base_s{seed}",
                         label=f"train seed {seed}", progress=not args.quiet)
    return tuned.model


def pruned(method, model, example, sparsity, seed):
    kw = dict(sparsity=sparsity, importance="l1", seed=seed)
    if method == "default":
        return ifv.prune(model, example, method="default", **kw)
    if method == "IF (paper)":
        return ifv.prune(model, example, method="intra-fusion", config=ifv.OTConfig.paper(), **kw)
    if method == "IF (data-free)":
        return ifv.prune(model, example, method="intra-fusion", config=ifv.OTConfig.data_free(),
                         repair="data-free", **kw)
    if method == "fold":
        return ifv.prune(model, example, method="fold", **kw)
    raise ValueError(f"unknown method {method!r}; use one of {METHODS}")


def run(args):
    import pandas as pd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = digits_tensors() if args.tiny else fashion_tensors(Path(args.data_root), args.n_test)
    path = out / "records.csv"
    records = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    for seed in args.seeds:
        model = base_model(args, seed, train, test, out)
        unpruned = ifv.accuracy(model, test)
        for sparsity in args.sparsities:
            for method in args.methods:
                if len(records) and ((records.seed == seed) & (records.sparsity.sub(sparsity).abs() < 1e-9)
                                     & (records.label == method)).any():
                    continue
                res = pruned(method, model, train[0][:1], sparsity, seed)
                tuned = ifv.finetune(res, train, epochs=args.epochs, eval_data=test, lr=args.lr,
                                     epoch_size=args.epoch_size, seed=seed, label=method,
                                     checkpoint_dir=out / f"ft_s{seed}_{sparsity}_{method.replace(' ', '_')}",
                                     progress=not args.quiet)
                rec = tuned.records.assign(sparsity=sparsity, unpruned=unpruned, params_before=res.params_before,
                                           model="vgg11_bn" if not args.tiny else "SmallCNN", importance="l1")
                records = pd.concat([records, rec], ignore_index=True)
                records.to_csv(path, index=False)
                print(f"seed {seed} sparsity {sparsity:.0%} {method}: "
                      + " ".join(f"{a:.1f}" for a in tuned.accuracy), flush=True)
    return records


def summary(records, epochs: int):
    """Per (sparsity, method): final accuracy (mean over seeds), epochs to reach default's final accuracy."""
    rows = []
    for sparsity, at in records.groupby("sparsity"):
        for method in [m for m in METHODS if m in set(at.label)]:
            per_seed = []
            for seed, run_ in at[at.label == method].groupby("seed"):
                default = at[(at.label == "default") & (at.seed == seed)].set_index("epoch").accuracy
                target = float(default.get(epochs, np.nan))
                curve = run_.set_index("epoch").accuracy
                reached = [e for e, a in curve.items() if a >= target - 1e-9]
                per_seed.append((float(curve.get(0)), float(curve.get(epochs, np.nan)),
                                 min(reached) if reached else math.inf))
            start, final, reach = (np.array(v, dtype=float) for v in zip(*per_seed))
            finite = reach[np.isfinite(reach)]
            rows.append(dict(sparsity=sparsity, method=method, seeds=len(per_seed),
                             params=int(at[at.label == method].params.iloc[0]),
                             epoch_0=start.mean(), final=final.mean(), final_min=final.min(), final_max=final.max(),
                             epochs_to_default_final=(f"{finite.mean():.1f}" if len(finite) == len(reach)
                                                      else f"{len(finite)}/{len(reach)} seeds reach it"),
                             epochs_saved=(f"{epochs - finite.mean():.1f}" if len(finite) == len(reach) else "")))
    return rows


def report(records, args) -> str:
    rows = summary(records, args.epochs)
    unpruned = records.groupby("seed").unpruned.first()
    what = "digits, SmallCNN" if args.tiny else f"Fashion-MNIST, VGG11-BN x{args.width}"
    head = (f"{what} (unpruned {unpruned.mean():.2f} %, {len(unpruned)} seed(s)), whole model, l1; fine-tuning "
            f"{args.epochs} epochs of {args.epoch_size or 'all'} images, lr {args.lr}, accuracy on "
            f"{'the test split' if args.tiny else f'{args.n_test} test images'} (mean over seeds; min-max in "
            "brackets); epochs to default's final: first epoch whose accuracy reaches default pruning's final\n")
    table = markdown_table(
        ["sparsity", "method", "params", "epoch 0", f"after {args.epochs} epochs", "epochs to default's final",
         "epochs saved"],
        [[f"{r['sparsity']:.0%}", r["method"], f"{r['params']:,}", f"{r['epoch_0']:.2f}",
          f"{r['final']:.2f} [{r['final_min']:.2f}-{r['final_max']:.2f}]", r["epochs_to_default_final"],
          r["epochs_saved"]] for r in rows])
    return head + "\n" + table


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(shared_fashion_root()))
    p.add_argument("--out", default=str(RESULTS / "finetune_recovery"))
    p.add_argument("--model", choices=("own", "reference"), default="own")
    p.add_argument("--width", type=float, default=0.25, help="VGG11-BN width multiplier (own model)")
    p.add_argument("--train-epochs", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--epoch-size", type=int, default=10_000)
    p.add_argument("--n-test", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--tiny", action="store_true", help="digits, SmallCNN, 2 epochs: seconds (tests)")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_epochs, args.epochs, args.epoch_size, args.sparsities = 4, 2, None, [0.5]
    return args


def main(argv=None) -> str:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = parse(argv)
    records = run(args)
    text = report(records, args)
    out = Path(args.out)
    (out / "finetune_recovery.md").write_text(text + "\n")
    fig = ifv.figures.finetune_figure(records, model_name=records.model.iloc[0], importance="l1")
    fig.write_html(out / "finetune_recovery.html", include_plotlyjs="cdn")
    print(text)
    return text


if __name__ == "__main__":
    main()
