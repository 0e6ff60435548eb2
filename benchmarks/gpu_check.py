"""A few minutes on one CUDA GPU: correctness on CUDA, speed, and the paper's sweep on Fashion-MNIST.

Sections (each timed, each writes its lines to the results file even if a later one fails):

1. ``cuda``: prune / repair / fuse / finetune on CUDA agree with the CPU (VGG11-BN and ResNet18 at CIFAR
   widths, paper preset, G1-G3 at 50 %: the same kept channels, logits within 1e-3 relative).
2. ``paper speed``: one-group paper-preset pruning (``OTConfig.paper()``, l1, VGG11-BN and ResNet18, G1-G3 at
   30/50/70 %), warm, median of 3, beside the authors' recorded 0.31-2.06 s per Intra-Fusion cell.
3. ``whole model``: whole-model Intra-Fusion at 50 % of torchvision's ResNet50 and ViT-B/16 (random
   weights), first call (tracing included) and a second, warm call.
4. ``fashion sweep``: VGG11-BN (width 0.5, 1 channel, 32x32) trained on Fashion-MNIST the paper's way (SGD
   momentum 0.9, weight decay 5e-4, cosine, batch 128), then G1-G3 at 30-70 % with l1, default vs Intra-Fusion
   (paper preset) vs Intra-Fusion (default config), no fine-tuning: Table 10's shape on Fashion-MNIST.

    bash benchmarks/gpu_check.sh                      # on the GPU machine: everything, results in benchmarks/results/gpu_check.md
    python benchmarks/gpu_check.py --device cpu --tiny   # seconds: checks the script itself on a CPU
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import RESULTS, markdown_table  # noqa: E402

AUTHORS_RECORDED = "0.31-2.06 s per Intra-Fusion cell (their code, recorded in benchmarks/bench_paper_speed.py)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def cifar_models(tiny):
    torch.manual_seed(0)
    vgg = ifv.models.vgg11_bn(num_classes=10, width_mult=1 / 16 if tiny else 1.0)
    res = ifv.models.resnet18(num_classes=10, width=4 if tiny else 64)
    for m in (vgg, res):  # trained-looking BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.data.uniform_(0.5, 1.5)
        m.eval()
    return {"vgg11_bn": vgg, "resnet18": res}


def check_cuda(args, device, lines):
    """The same pruning on CPU and on the device: same kept channels, close logits."""
    rows = []
    x = torch.randn(8, 3, 32, 32)
    for name, model in cifar_models(args.tiny).items():
        groups = {g.paper_index: g for g in ifv.find_groups(model, x[:1])}
        for paper in (1, 2, 3):
            cpu = ifv.prune(model, x[:1], {groups[paper].index: 0.5}, config=ifv.OTConfig.paper())
            dev_model = copy.deepcopy(model).to(device)
            dev = ifv.prune(dev_model, x[:1].to(device), {groups[paper].index: 0.5}, config=ifv.OTConfig.paper())
            same = torch.equal(cpu.groups[0].kept.cpu(), dev.groups[0].kept.cpu())
            with torch.no_grad():
                a, b = cpu.model(x), dev.model(x.to(device)).cpu()
            rel = float((a - b).norm() / a.norm())
            rows.append([name, f"G{paper}", "yes" if same else "NO", f"{rel:.1e}", "ok" if same and rel < 1e-3 else "FAIL"])
    # fuse and finetune on the device
    a, b = (ifv.models.SmallCNN().to(device) for _ in range(2))
    xs = torch.randn(64, 1, 8, 8, device=device)
    fused = ifv.fuse([a, b], xs[:1], batch=xs)
    tuned = ifv.finetune(a, (xs, torch.randint(0, 10, (64,), device=device)), epochs=1, progress=False)
    rows.append(["SmallCNN", "fuse + finetune", "", "", "ok" if fused.model is not None and len(tuned.accuracy) == 2
                 else "FAIL"])
    lines.append(markdown_table(["model", "group", "same kept channels", "logits rel. diff", "status"], rows))


def paper_speed(args, device, lines):
    rows = []
    x = torch.randn(1, 3, 32, 32, device=device)
    for name, model in cifar_models(args.tiny).items():
        model = model.to(device)
        groups = {g.paper_index: g for g in ifv.find_groups(model, x)}
        ifv.prune(model, x, {groups[1].index: 0.5}, config=ifv.OTConfig.paper())  # warm: trace, kernels
        for paper in (1, 2, 3):
            for s in (0.3, 0.5, 0.7):
                _, t = timed(lambda: ifv.prune(model, x, {groups[paper].index: s}, config=ifv.OTConfig.paper()),
                             device, repeats=3)
                rows.append([name, f"G{paper}", f"{s:.0%}", f"{t * 1000:.1f}"])
    lines.append(markdown_table(["model", "group", "sparsity", "ours, warm (ms, median of 3)"], rows))
    lines.append(f"\nthe authors: {AUTHORS_RECORDED}")


def whole_model(args, device, lines):
    from torchvision.models import resnet50, vit_b_16

    rows = []
    builds = {"resnet50": (resnet50, 224), "vit_b_16": (vit_b_16, 224)}
    if args.tiny:
        builds = {"resnet18": (lambda: ifv.models.resnet18(num_classes=10, width=4), 32)}
    for name, (build, size) in builds.items():
        torch.manual_seed(0)
        model = build().eval().to(device)
        x = torch.randn(1, 3, size, size, device=device)
        res, cold = timed(lambda: ifv.prune(model, x, 0.5, method="intra-fusion"), device)
        _, warm = timed(lambda: ifv.prune(model, x, 0.5, method="intra-fusion"), device)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        rows.append([name, f"{res.params_before / 1e6:.1f} M -> {res.params_after / 1e6:.1f} M", f"{cold:.2f}",
                     f"{warm:.2f}", f"{peak:.1f}", str(len(res.skipped))])
    lines.append(markdown_table(["model", "params", "first call (s)", "warm call (s)", "peak GPU memory (GiB)",
                                 "groups skipped"], rows))


def fashion_sweep(args, device, lines):
    from finetune_recovery import fashion_tensors, shared_fashion_root

    root = Path(args.fashion_root or shared_fashion_root())
    if args.tiny:
        data = ifv.data.load_digits_tensors(seed=0)
        train, test = (data.x_train, data.y_train), (data.x_test, data.y_test)
        model = ifv.models.SmallCNN()
    else:
        train, test = fashion_tensors(root, 10_000)
        model = ifv.models.vgg11_bn(num_classes=10, width_mult=0.5, in_channels=1)
    train = tuple(t.to(device) for t in train)
    test = tuple(t.to(device) for t in test)
    model = model.to(device)
    start = time.perf_counter()
    ifv.train(model, train, epochs=args.epochs, lr=0.05, batch_size=128, seed=0, progress=False)
    sync(device)
    train_s = time.perf_counter() - start
    unpruned = ifv.accuracy(model, test)
    example = train[0][:1]
    batch = (train[0][:128], train[1][:128])
    groups = {g.paper_index: g for g in ifv.find_groups(model, example)}
    rows = []
    methods = (("default", "default", ifv.OTConfig.paper()), ("IF (paper)", "intra-fusion", ifv.OTConfig.paper()),
               ("IF (default config)", "intra-fusion", ifv.OTConfig()))
    start = time.perf_counter()
    for paper in [g for g in (1, 2, 3) if g in groups]:
        for s in (0.3, 0.4, 0.5, 0.6, 0.7):
            accs = [ifv.accuracy(ifv.prune(model, example, {groups[paper].index: s}, method=m, config=c,
                                           importance="l1").model, test) for _, m, c in methods]
            rows.append([f"G{paper}", f"{s:.0%}", *(f"{a:.2f}" for a in accs)])
    sync(device)
    sweep_s = time.perf_counter() - start
    lines.append(f"{'digits SmallCNN' if args.tiny else 'Fashion-MNIST VGG11-BN x0.5'}: trained {args.epochs} "
                 f"epochs in {train_s:.0f} s, unpruned {unpruned:.2f} %; sweep of {len(rows) * 3} cells in "
                 f"{sweep_s:.0f} s (l1, no fine-tuning)\n")
    lines.append(markdown_table(["group", "sparsity", *(label for label, _, _ in methods)], rows))


SECTIONS = {"cuda": check_cuda, "paper speed": paper_speed, "whole model": whole_model,
            "fashion sweep": fashion_sweep}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=str(RESULTS / "gpu_check.md"))
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--epochs", type=int, default=15, help="Fashion-MNIST training epochs")
    p.add_argument("--fashion-root", default=None)
    p.add_argument("--tiny", action="store_true", help="tiny models and digits: checks the script in seconds")
    args = p.parse_args(argv)
    if args.tiny:
        args.epochs = 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on a GPU machine, or --device cpu --tiny to check the script")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# GPU check: {card}\n", f"torch {torch.__version__}, intrafusion_viz {ifv.__version__}"
             + (", --tiny (script check only)" if args.tiny else "") + "\n"]
    failed = 0
    for name in args.sections:
        lines.append(f"\n## {name}\n")
        start = time.perf_counter()
        try:
            SECTIONS[name](args, device, lines)
        except Exception:  # noqa: BLE001  (report and go on: the other sections still run)
            failed += 1
            lines.append("```\n" + traceback.format_exc(limit=6) + "```")
        lines.append(f"\n({name}: {time.perf_counter() - start:.0f} s)")
        out.write_text("\n".join(lines) + "\n")
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    print(out.read_text())
    return failed


if __name__ == "__main__":
    sys.exit(main())
