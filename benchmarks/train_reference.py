"""Train the converged reference models (wide VGG11-BN, ResNet18 width 32, a ViT) on the MNIST 8,000-image split.

Checkpoints go to ``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference/<arch>_s<seed>.pt``
(outside git); ``intrafusion_viz.reference_model(arch, seed)`` loads them (and trains when missing).

    python benchmarks/train_reference.py --arch vgg11_bn resnet18 --seeds 0 1 2
    python benchmarks/train_reference.py --arch vit --seeds 0 1     # torchvision VisionTransformer, AdamW
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None):
    from intrafusion_viz.evaluation._reference import REFERENCE_ARCHS, reference_data, reference_dir, train_reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(REFERENCE_ARCHS), choices=REFERENCE_ARCHS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="retrain even when a checkpoint exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = reference_data()
    for seed in args.seeds:
        for arch in args.arch:
            path = reference_dir() / f"{arch}_s{seed}.pt"
            if path.exists() and not args.force:
                print(f"{arch} seed {seed}: cached at {path}", flush=True)
                continue
            start = time.perf_counter()
            _, acc = train_reference(arch, seed, data=data, path=path)
            print(f"{arch} seed {seed}: test accuracy {acc:.2f} % ({time.perf_counter() - start:.0f} s) -> {path}",
                  flush=True)
            from intrafusion_viz import load_checkpoint

            curve = load_checkpoint(path)[1].get("eval_curve")
            if curve:
                print(f"  test accuracy after each epoch: {curve}", flush=True)


if __name__ == "__main__":
    main()
