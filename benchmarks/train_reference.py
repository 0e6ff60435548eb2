"""Train the converged reference models (VGG11-BN, ResNet18, a ViT) on MNIST (8,000-image split) or Fashion-MNIST.

Checkpoints go to ``$INTRAFUSION_VIZ_REFERENCE`` or ``~/.cache/intrafusion_viz_reference/`` (outside git):
``<arch>_s<seed>.pt`` (MNIST), ``<arch>_fashion-mnist_s<seed>.pt``; ``intrafusion_viz.reference_model(arch,
seed, dataset=...)`` loads them (and trains when missing).

    python benchmarks/train_reference.py --arch vgg11_bn resnet18 --seeds 0 1 2
    python benchmarks/train_reference.py --arch vit --seeds 0 1     # torchvision VisionTransformer, AdamW
    python benchmarks/train_reference.py --dataset fashion-mnist --arch vgg11_bn resnet18 --seeds 0 1 2

Times measured on one thread of a shared, loaded 2-core CPU: MNIST VGG11-BN 861-1053 s per seed; Fashion-MNIST
(60,000 images, 2 epochs) VGG11-BN 1611-1963 s per seed. On a quiet machine Fashion VGG11-BN takes about 2.6 min
per epoch (2 threads), ResNet18 width 32 about 7 min per epoch (hence width 16 for Fashion-MNIST). The log
prints each run's time and its test accuracy after every epoch (the plateau check).
"""
from __future__ import annotations

import argparse
import time

import torch


def main(argv=None):
    from intrafusion_viz.evaluation._reference import (REFERENCE_ARCHS, REFERENCE_DATASETS, checkpoint_name,
                                                       reference_data, reference_dir, train_reference)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=list(REFERENCE_ARCHS), choices=REFERENCE_ARCHS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dataset", default="mnist", choices=REFERENCE_DATASETS)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (for log files)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="retrain even when a checkpoint exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = reference_data(dataset=args.dataset)
    for seed in args.seeds:
        for arch in args.arch:
            path = reference_dir() / checkpoint_name(arch, seed, args.dataset)
            if path.exists() and not args.force:
                print(f"{arch} seed {seed}: cached at {path}", flush=True)
                continue
            start = time.perf_counter()
            _, acc = train_reference(arch, seed, data=data, path=path, dataset=args.dataset,
                                     progress=not args.no_progress)
            print(f"{args.dataset} {arch} seed {seed}: test accuracy {acc:.2f} % ({time.perf_counter() - start:.0f} s) -> {path}",
                  flush=True)
            from intrafusion_viz import load_checkpoint

            curve = load_checkpoint(path)[1].get("eval_curve")
            if curve:
                print(f"  test accuracy after each epoch: {curve}", flush=True)
            loss = load_checkpoint(path)[1].get("train_loss")
            if loss:
                print(f"  training loss of each epoch: {loss}", flush=True)


if __name__ == "__main__":
    main()
