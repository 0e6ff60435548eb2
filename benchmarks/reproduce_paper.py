"""Reproduce the Intra-Fusion paper's CIFAR-10 tables (Table 10: VGG11-BN, Table 12: ResNet18).

Trains (or loads, ``--checkpoint-dir``) VGG11-BN and ResNet18 on CIFAR-10, then prunes groups G1-G3
(the paper's numbering, counted from the output) alone at 30-70% with l1 and Taylor importance, without
fine-tuning, and prints every cell of the paper (``intrafusion_viz.paper.PAPER``: Tables 10 and 12 and the
paper's failure cases, VGG11-BN G7 and ResNet18 G4 / G7) beside ours: paper default, paper Intra-Fusion,
ours default, ours Intra-Fusion with the paper preset (``ifv.OTConfig.paper()``: p = 1, weight-only cost,
importance scored on the BatchNorm-folded weights), ours Intra-Fusion with the project's default config
(``ifv.OTConfig()``), and the differences (ours minus the paper's).  The sweep is the one the authors'
repository (alexandertheus/Intra-Fusion) runs: groups 1-3, sparsities 0.3-0.7, l1 and Taylor, plus the groups of
the failure cases.  The paper's Table 1 (whole model, fine-tuned) and section 6 speed-ups are printed after
the tables (their flows: ``benchmarks/finetune_recovery.py``, ``benchmarks/fusion_pipelines.py``).

Runs as is on one GPU with internet (CIFAR-10 is downloaded into ``--data-root``) or on Colab:

    python benchmarks/reproduce_paper.py --download                 # full run, prints a time estimate first
    python benchmarks/reproduce_paper.py --tiny --data-root DIR     # seconds on CPU, for tests
    python benchmarks/reproduce_paper.py --workers 4                # cells on a 4-process Dask LocalCluster
    python benchmarks/reproduce_paper.py --scheduler tcp://host:8786   # or on a running Dask cluster

Resumable: training checkpoints every epoch (``<out>/<model>_train.pt``), the trained model
(``<out>/<model>.pt``) and one JSON line per measured cell (``<out>/results.jsonl``); a rerun skips what
is there.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import RESULTS, add_executor_options, executor_from_args, markdown_table  # noqa: E402
from intrafusion_viz.paper import (PAPER, PAPER_TABLE, SECTION_6, TABLE_1, TABLE_1_UNPRUNED,  # noqa: E402,F401
                                   paper_groups)  # the paper's numbers live in the package

# (results label, prune method, config): default pruning, Intra-Fusion with the paper preset, with our default.
METHODS = (("default", "default", ifv.OTConfig.paper()), ("IF (paper)", "intra-fusion", ifv.OTConfig.paper()),
           ("IF (default config)", "intra-fusion", ifv.OTConfig()))


def build(name: str, tiny: bool) -> torch.nn.Module:
    if name == "vgg11_bn":
        return ifv.models.vgg11_bn(num_classes=10, width_mult=1 / 16 if tiny else 1.0)
    if name == "resnet18":
        return ifv.models.resnet18(num_classes=10, width=4 if tiny else 64)
    raise ValueError(f"unknown model {name!r}; use vgg11_bn or resnet18")


def loaders(args):
    from torch.utils.data import DataLoader, Subset

    try:
        train, test = ifv.data.cifar_datasets(args.data_root, "cifar10", download=args.download)
    except FileNotFoundError as err:
        sys.exit(f"{err}\nThis script needs CIFAR-10: pass --download (internet) or --data-root DIR "
                 "with the extracted cifar-10-batches-py/.")
    if args.tiny:
        train, test = Subset(train, range(min(len(train), 64))), Subset(test, range(min(len(test), 64)))
    g = torch.Generator().manual_seed(args.seed)
    workers = 0 if args.tiny else 2
    return (DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g, num_workers=workers,
                       drop_last=not args.tiny),
            DataLoader(test, batch_size=500, num_workers=workers))


def train_or_load(name, args, train_loader, test_loader, device, out: Path):
    """Load ``<checkpoint-dir or out>/<name>.pt`` or train (resuming from ``<out>/<name>_train.pt``)."""
    model = build(name, args.tiny).to(device)
    final = Path(args.checkpoint_dir or out) / f"{name}.pt"
    if final.is_file():
        ifv.load_checkpoint(final, model)
        print(f"{name}: loaded {final}")
        return model.to(device).eval()
    from tqdm.auto import tqdm

    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    partial = out / f"{name}_train.pt"
    epoch = 0
    if partial.is_file():
        state = torch.load(partial, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        epoch = int(state["epoch"])
        print(f"{name}: resuming training at epoch {epoch + 1}/{args.epochs}")
    torch.manual_seed(args.seed + epoch)
    for epoch in tqdm(range(epoch, args.epochs), desc=f"train {name}", initial=epoch, total=args.epochs):
        model.train()
        for x, y in tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "epoch": epoch + 1}, partial)
    ifv.save_checkpoint(model, final, arch=name, epochs=args.epochs, tiny=args.tiny)
    return model.eval()


def estimate(args, train_loader, test_loader, device) -> str:
    """Seconds for training and sweeping, from a few timed steps on this machine."""
    model = build("resnet18", args.tiny).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = next(iter(train_loader))
    x, y = x.to(device), y.to(device)
    steps = 2 if args.tiny else 5
    for i in range(steps + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    # Relative cost per step: ResNet18 1.0 (measured), VGG11-BN about 0.5; data loading assumed to keep up.
    factor = sum({"resnet18": 1.0, "vgg11_bn": 0.5}.get(m, 1.0) for m in args.models)
    train_s = per_step * len(train_loader) * args.epochs * factor
    groups = sum(len(args.groups or paper_groups(m)) for m in args.models)
    cells = groups * len(args.sparsities) * len(args.importances) * len(METHODS)
    test_steps = math.ceil(len(test_loader.dataset) / args.batch_size)
    eval_s = cells * test_steps * per_step / 3  # a forward pass is about a third of a training step
    return (f"estimated time on this machine ({device}): training {train_s / 60:.0f} min "
            f"({args.epochs} epochs x {len(args.models)} models, skipped for models already trained), "
            f"sweep {eval_s / 60:.0f} min ({cells} pruned models evaluated)")


def load_done(path: Path) -> Dict[tuple, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["model"], r["group"], r["sparsity"], r["importance"], r["method"])] = r
    return done


def sweep(name, model, args, train_loader, test_loader, device, results: Path, done, executor=None):
    """Measure the cells not in ``done``; each is appended to ``results`` as it finishes (resumable)."""
    example = next(iter(test_loader))[0][:1].to(device)
    x, y = next(iter(train_loader))
    batch = (x.to(device), y.to(device))
    groups = {g.paper_index: g for g in ifv.find_groups(model, example)}
    cells, records = [], []
    if (name, 0, 0.0, "", "original") not in done:
        cells.append(ifv.sweeps.SweepCell(None, 0.0, "original"))
        records.append(dict(model=name, group=0, sparsity=0.0, importance="", method="original", group_name=""))
    for paper in args.groups or paper_groups(name):
        for s in args.sparsities:
            for imp in args.importances:
                for label, method, config in METHODS:
                    if (name, paper, s, imp, label) in done:
                        continue
                    g = groups[paper]
                    cells.append(ifv.sweeps.SweepCell(g.index, s, method, imp, config, args.seed))
                    records.append(dict(model=name, group=paper, sparsity=s, importance=imp, method=label,
                                        group_name=g.name))
    if executor is not None:
        # Workers are daemon processes (Dask): they cannot start DataLoader workers of their own.
        test_loader = torch.utils.data.DataLoader(test_loader.dataset, batch_size=test_loader.batch_size)

    def finished(index, outcome):
        if outcome.ok:
            _append(results, done, dict(records[index], accuracy=outcome.value))
        else:
            r = records[index]
            print(f"{name} G{r['group']} {r['sparsity']:.0%} {r['importance']} {r['method']} failed: "
                  f"{type(outcome.error).__name__}: {outcome.error} (a rerun retries it)", file=sys.stderr)

    outcomes = ifv.sweeps.evaluate_cells(model, test_loader, example, cells, batch=batch, executor=executor,
                                         desc=f"sweep {name}", on_done=finished)
    return sum(not o.ok for o in outcomes)


def _append(path: Path, done, record):
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    done[(record["model"], record["group"], record["sparsity"], record["importance"], record["method"])] = record


def report(done, args) -> str:
    """Every paper cell of each model with ours beside it, then Table 1 and section 6 (the paper's)."""
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    diff = lambda a, b: "" if a is None or b is None else f"{a - b:+.2f}"  # noqa: E731
    out = []
    for name in args.models:
        orig = done.get((name, 0, 0.0, "", "original"))
        out.append(f"\n### {name} on CIFAR-10 vs the paper's {PAPER_TABLE[name]} "
                   f"(ours unpruned: {fmt(orig and orig['accuracy'])} %)\n")
        keys = {(g, s, imp) for m, imp, g, s in PAPER if m == name}
        keys |= {(r["group"], r["sparsity"], r["importance"]) for (m, *_), r in done.items()
                 if m == name and r["method"] != "original"}
        rows = []
        for paper, s, imp in sorted(keys, key=lambda k: (k[2], k[0], k[1])):
            ours = [done.get((name, paper, s, imp, label)) for label, _, _ in METHODS]
            ours = [r and r["accuracy"] for r in ours]
            theirs = PAPER.get((name, imp, paper, s), (None, None))
            rows.append([f"G{paper}", f"{s:.0%}", imp, fmt(theirs[0]), fmt(theirs[1]), *(fmt(a) for a in ours),
                         diff(ours[0], theirs[0]), diff(ours[1], theirs[1])])
        out.append(markdown_table(["group", "sparsity", "importance", "paper: default", "paper: IF",
                                   "ours: default", "ours: IF (paper preset)", "ours: IF (default config)",
                                   "Δ default", "Δ IF"], rows))
    out.append("\n### The paper's Table 1 (whole model, l1, fine-tuned; ours: benchmarks/finetune_recovery.py)\n")
    out.append(markdown_table(["model", "unpruned", "sparsity (weights)", "paper: default", "paper: IF"],
                              [[m, fmt(TABLE_1_UNPRUNED[m]), f"{s:.0%}", fmt(d), fmt(f)]
                               for (m, s), (d, f) in TABLE_1.items()]))
    out.append(f"\n### The paper's section 6 ({SECTION_6['model']}, {SECTION_6['protocol']}; ours: "
               f"benchmarks/fusion_pipelines.py)\n\ntraining-time speed-up {SECTION_6['training_speedup']}x, "
               f"overall {SECTION_6['overall_speedup_paf']}x (PaF), {SECTION_6['overall_speedup_fap']}x (FaP)")
    return "\n".join(out)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data/cifar10")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 (needs internet)")
    p.add_argument("--out", default=str(RESULTS / "paper"))
    p.add_argument("--checkpoint-dir", default=None, help="folder with <model>.pt to load instead of training")
    p.add_argument("--models", nargs="+", default=["vgg11_bn", "resnet18"])
    p.add_argument("--groups", type=int, nargs="+", default=None,
                   help="paper group numbers (default: every group the paper reports for the model)")
    p.add_argument("--sparsities", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--importances", nargs="+", default=["l1", "taylor"])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny widths, 64 images, 1 epoch, 50%% l1 only (tests)")
    add_executor_options(p)
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs, args.batch_size, args.sparsities, args.importances = 1, 32, [0.5], ["l1"]
    return args


def main(argv=None) -> str:
    args = parse(argv)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_loader, test_loader = loaders(args)
    print(estimate(args, train_loader, test_loader, device), flush=True)
    results = out / "results.jsonl"
    done = load_done(results)
    failed = 0
    with executor_from_args(args) as executor:
        for name in args.models:
            model = train_or_load(name, args, train_loader, test_loader, device, out)
            failed += sweep(name, model, args, train_loader, test_loader, device, results, done, executor)
    text = report(done, args)
    (out / "reproduce_paper.md").write_text(text + "\n")
    print(text)
    if failed:
        print(f"{failed} cells failed (reasons above; they print n/a): rerun to retry them", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
