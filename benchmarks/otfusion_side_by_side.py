"""``ifv.fuse`` beside OTFusion's own code (github sidak/otfusion @ eb73ad6): the same neurons matched?

Question: does ``ifv.fuse(..., cost="activation")`` (default ``pool=None``: whole feature maps) align the
neurons OTFusion's own activation-based fusion aligns, and how far does ``pool=4`` (the old default) drift?

Setup: two small bias-free networks per architecture (an MLP 64-32-32-10 and a CNN conv8-conv16-pool-conv16-fc,
no BatchNorm: OTFusion's activation code needs bias-free layers), trained on scikit-learn's 8x8 digits with
seeds 0 and 1; 100 training images.  OTFusion runs ``get_acts_wassersteinized_layers_modularized`` with
``--geom-ensemble-type acts --activation-mode raw --prelu-acts --exact --ground-metric euclidean
--not-squared --ground-metric-normalize none --correction --past-correction`` (whole maps, pre-ReLU, exact
EMD, plain Euclidean distance: the settings ``ifv.fuse`` implements); the glue below only wraps their
transport-map function to record each layer's map.  OTFusion aligns its model 0 onto its model 1;
``ifv.fuse`` aligns models[1:] onto models[0], so ours is run as ``fuse([their model 1, their model 0])``.

    git clone https://github.com/sidak/otfusion /tmp/otfusion && git -C /tmp/otfusion checkout eb73ad6
    python benchmarks/otfusion_side_by_side.py --otfusion /tmp/otfusion            # prints the table
    python benchmarks/otfusion_side_by_side.py --otfusion /tmp/otfusion --record tests/data/otfusion_acts.torch

``--record`` writes the four models' weights, the 100 inputs and OTFusion's assignments per layer
(``tests/test_fuse.py`` checks ``ifv.fuse`` against them without OTFusion's code).  Their code never enters
the package or the tests; it needs POT (``pip install pot``) and its ``cifar.zip`` extracted (done here).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import intrafusion_viz as ifv  # noqa: E402

N_SAMPLES = 100


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False),
                         nn.ReLU(), nn.Linear(32, 10, bias=False))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10, bias=False))


ARCHS = {"mlp": mlp, "cnn": cnn}


def trained_pair(arch: str, data):
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = ARCHS[arch]()
        ifv.train(model, (data.x_train, data.y_train), epochs=6, seed=seed, progress=False)
        models.append(model.eval())
    return models


def their_args(otfusion: Path):
    """OTFusion's own parser, with the settings that match ifv.fuse's activation cost."""
    import parameters

    parser = parameters.get_parser()
    args = parser.parse_args(["--gpu-id", "-1", "--dataset", "mnist", "--geom-ensemble-type", "acts",
                              "--activation-histograms", "--activation-mode", "raw", "--act-num-samples",
                              str(N_SAMPLES), "--prelu-acts", "--exact", "--ground-metric", "euclidean",
                              "--not-squared", "--ground-metric-normalize", "none", "--correction",
                              "--past-correction"])  # disable_bias is on by default (store_false)
    return args


def run_theirs(otfusion: Path, models, x):
    """OTFusion's transport map per layer (model 0 onto model 1), from their own functions."""
    os.chdir(otfusion)
    if not (otfusion / "cifar").is_dir():
        zipfile.ZipFile(otfusion / "cifar.zip").extractall(otfusion)
    sys.path[:0] = [str(otfusion), str(otfusion / "cifar"), str(otfusion / "cifar" / "models")]
    import compute_activations
    import wasserstein_ensemble

    args = their_args(otfusion)
    args.model_name = "glue"  # not a VGG: no pooling of activations
    loader = [(x[i:i + 1], torch.zeros(1, dtype=torch.long)) for i in range(len(x))]
    maps = []
    original = wasserstein_ensemble._get_current_layer_transport_map

    def recording(*a, **kw):
        t = original(*a, **kw)
        maps.append(t.clone())
        return t

    wasserstein_ensemble._get_current_layer_transport_map = recording
    with contextlib.redirect_stdout(io.StringIO()):  # their code prints every step
        import utils as their_utils
        their_utils.get_model_layers_cfg = lambda name: None
        acts = compute_activations.compute_activations_across_models_v1(args, models, loader, N_SAMPLES, mode="raw")
        wasserstein_ensemble.get_acts_wassersteinized_layers_modularized(args, models, acts)
    wasserstein_ensemble._get_current_layer_transport_map = original
    return maps[:-1]  # the output layer (classes) is not a group


def run_ours(models, x, pool):
    """ifv.fuse's plans, ours aligning their model 0 (our B) onto their model 1 (our A)."""
    res = ifv.fuse([models[1], models[0]], x[:1], cost="activation", batch=x, pool=pool)
    return [g.plan for g in res.groups], res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--otfusion", required=True, help="a checkout of github sidak/otfusion at eb73ad6")
    p.add_argument("--record", default=None, help="write models, inputs and OTFusion's assignments here (torch.save format)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = ifv.data.load_digits_tensors(seed=0)
    x = data.x_train[:N_SAMPLES].clone()  # a view would save the whole training set
    here = Path.cwd()
    record, rows = {"inputs": x, "archs": {}}, []
    for arch in ARCHS:
        models = trained_pair(arch, data)
        theirs = run_theirs(Path(args.otfusion).resolve(), models, x)
        os.chdir(here)
        assignments = [t.argmax(1) for t in theirs]
        record["archs"][arch] = dict(state_0={k: v.clone() for k, v in models[0].state_dict().items()},
                                     state_1={k: v.clone() for k, v in models[1].state_dict().items()},
                                     assignments=assignments)
        for pool in (None, 4, 2):
            plans, _ = run_ours(models, x, pool)
            same = [float((plan.argmax(1) == a).double().mean()) for plan, a in zip(plans, assignments)]
            rows.append([arch, "whole maps" if pool is None else f"{pool}x{pool}",
                         ", ".join(f"{100 * s:.0f} %" for s in same)])
    print("| model | ifv.fuse activation cost | same assignment as OTFusion, per layer |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.record:
        torch.save(record, args.record)
        print(f"recorded {args.record} ({Path(args.record).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
