"""Fusion in the training loop on real MNIST: baseline vs PaF vs FaP vs FaP with unaligned averaging.

The 8,000 training images (split from MNIST's 10,000-image test set; 2,000 others for testing) are
split in two; two VGG-style CNNs with BatchNorm (different seeds) train one per half; the pipelines
of :mod:`intrafusion_viz.fusion.pipelines` then fuse, prune (Intra-Fusion, l1) and fine-tune.  The baseline
trains one model on all 8,000 images for the same number of epochs, prunes and fine-tunes.  The halves
are trained one after the other here; their parallel time is the longer of the two (``parallel="max"``).

    nice -n 10 python benchmarks/fusion_pipelines.py                  # 3 seeds
    nice -n 10 python benchmarks/fusion_pipelines.py --quick          # 1 seed, small data, few epochs
    python benchmarks/fusion_pipelines.py --report-only               # tables + figure from the CSV

Prints a markdown table (mean ± std over seeds) and writes ``results/fusion_pipelines.{csv,md,html}``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import (DEFAULT_MNIST, RESULTS, header, load_mnist, markdown_table, mean_spread,  # noqa: E402
                           mnist_vgg, save_figure, save_text)

NAMES = {"baseline": "baseline", "paf": "PaF", "fap": "FaP", "fap-vanilla": "FaP, unaligned averaging"}


def report(df, command: str) -> str:
    import numpy as np

    out = [header(command)]
    base = df[(df.pipeline == "baseline") & (df.stage == "fine-tune")].sort_values("seed")
    base_time, base_cpu = base.train_time_s.to_numpy(), base.train_cpu_s.to_numpy()
    rows = []
    for name in NAMES:
        part = df[df.pipeline == name]
        if part.empty:
            continue
        last = part[part.step == part.step.max()].sort_values("seed")
        first = part[part.step == 0].sort_values("seed")
        fuse = part[part.stage == "fuse"].sort_values("seed")
        speedup = base_time / last.train_time_s.to_numpy() if len(base_time) == len(last) else [np.nan]
        cpu_speedup = (base_cpu / last.train_cpu_s.to_numpy() if len(base_cpu) == len(last) and
                       "train_cpu_s" in last else [np.nan])
        rows.append([NAMES[name], mean_spread(first.accuracy),
                     mean_spread(fuse.accuracy) if len(fuse) else "",
                     mean_spread(last.accuracy), f"{int(last.params.iloc[0]):,}",
                     int(last.epochs.iloc[0]), mean_spread(last.train_time_s), mean_spread(last.train_time_sum_s),
                     mean_spread(speedup), mean_spread(last.train_cpu_s), mean_spread(cpu_speedup)])
    model = df.model.iloc[0]
    out.append(f"\n{model}, sparsity {df.sparsity.iloc[0]:.0%}, {df.seed.nunique()} seeds (mean ± std); accuracy "
               "on the 2,000 held-out images; training time = wall clock of `ifv.train` calls, the two halves "
               "counted once (the longer of the two); speed-up = baseline training time / pipeline's; CPU time = "
               "the process's CPU seconds in `ifv.train` (one thread; less sensitive to the shared machine's "
               "load than wall clock), halves counted once.\n")
    out.append(markdown_table(
        ["pipeline", "after training (%)", "after fusing (%)", "final (%)", "final params", "epochs",
         "training time (s)", "training time, halves added (s)", "speed-up vs baseline", "training CPU time (s)",
         "CPU speed-up vs baseline"], rows))
    stages = []
    for (name, step, stage), cell in df.groupby(["pipeline", "step", "stage"], sort=False):
        stages.append([NAMES.get(name, name), stage, int(cell.stage_epochs.iloc[0]), mean_spread(cell.accuracy),
                       mean_spread(cell.train_time_s), f"{int(cell.params.iloc[0]):,}"])
    out.append("\nEvery stage:\n")
    out.append(markdown_table(["pipeline", "stage", "epochs", "accuracy (%)", "training time so far (s)",
                               "params"], stages))
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-root", default=str(DEFAULT_MNIST))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=32, help="VGG width w: conv widths (w, 2w, 2w, 2w)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (baseline on all, each half on its half)")
    parser.add_argument("--finetune", type=int, default=2, help="fine-tuning epochs (split over two stages in PaF/FaP)")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--n-train", type=int, default=8000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--parallel", default="max", choices=ifv.pipelines.PARALLEL_MODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import pandas as pd

    torch.set_num_threads(args.threads)
    command = "python benchmarks/fusion_pipelines.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    csv = Path(args.out) / "fusion_pipelines.csv"
    if args.quick:
        args.seeds, args.epochs, args.finetune, args.n_train, args.width = [0], 2, 2, 1000, 8
    if not args.report_only:
        train, test = load_mnist(args.mnist_root, args.n_train, args.n_test)
        frames = []
        for seed in args.seeds:
            start = time.perf_counter()
            df, _ = ifv.pipelines.compare_pipelines(
                lambda: mnist_vgg(args.width), train, test, sparsity=args.sparsity, epochs=args.epochs,
                finetune_epochs=args.finetune, seed=seed, parallel=args.parallel,
                model_name=f"VGG-style CNN with BatchNorm (width {args.width})",
                train_kwargs=dict(lr=args.lr), progress=False)
            df["data"] = f"MNIST {args.n_train:,}/{args.n_test:,}"
            frames.append(df)
            pd.concat(frames).to_csv(csv, index=False)  # keep what is done if a later seed is cut short
            final = df[df.step == df.groupby("pipeline").step.transform("max")]
            print(f"seed {seed} done in {time.perf_counter() - start:.0f}s:",
                  dict(zip(final.pipeline, final.accuracy.round(2))), flush=True)
    df = pd.read_csv(csv)
    text = report(df, command)
    print(text)
    save_text("fusion_pipelines.md", text, args.out)
    for x in ("train_cpu_s", "train_time_s", "epochs"):
        save_figure(ifv.figures.pipeline_timeline(df, x=x), f"fusion_pipelines_{x}", args.out)


if __name__ == "__main__":
    main()
