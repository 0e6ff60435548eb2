"""Why does Intra-Fusion's data-free plan collapse on VGG11-BN seed 0 at 70 %, and why do single groups miss 1.5 points?

Three diagnostics on the converged reference VGG11-BN (l1 importance, no fine-tuning, 2,000 test images),
each printing a markdown table (numbers in BENCHMARKS.md section 5.5):

``--layers``: every group at ``--sparsity``, IF-df (``OTConfig.data_free()``) against fold, data-free
repair: per layer the cluster sizes, the within-cluster correlation of the BatchNorm inputs measured on
256 training images against the repair's estimate, the merged channels' drift (``ifv.layer_drift``:
correlation with what they stand for, std ratio), the std of every merged BatchNorm's input in the
repaired network over the std the repair predicted (median, 10th-90th percentile), the median mean
shift in predicted std units, and dead channels (BatchNorm output <= 0 on >= 99.5 % of positions).

``--swap``: IF-df with k-means seed ``good`` in every group but one, which gets seed ``bad`` (and the
reverse): which group's clustering decides the accuracy.

``--consumer``: one group at a time at 70 %: data-free repair, "bn" (512 training images), and the data-free
repair with only the *next* layer's BatchNorm statistics measured on 512 training images (mean and
variance, or the mean only).

    python benchmarks/diagnose_data_free_70.py --layers --seed 0
    python benchmarks/diagnose_data_free_70.py --swap --seed 0 --good 1 --bad 0
    python benchmarks/diagnose_data_free_70.py --consumer --cases 0:1 0:2 1:2 1:3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _prune(ifv, model, x, sparsity, label, seed=0):
    kw = dict(method="fold") if label == "fold" else dict(config=ifv.OTConfig.data_free())
    return ifv.prune(model, x[:1], sparsity, importance="l1", repair="none", seed=seed, **kw)


@torch.no_grad()
def _bn_inputs(net, x):
    """Per BatchNorm2d: measured std of its input / the std its running statistics assume, mean shift, dead."""
    out, hooks = {}, []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            def hook(mod, inp, outp, name=name):
                a = inp[0].double().movedim(1, 0).reshape(inp[0].shape[1], -1)
                o = outp.double().movedim(1, 0).reshape(outp.shape[1], -1)
                sd = torch.sqrt(mod.running_var.double() + mod.eps)
                out[name] = dict(ratio=a.std(1) / sd, shift=(a.mean(1) - mod.running_mean.double()) / sd,
                                 dead=(o > 0).double().mean(1) < 0.005)
            hooks.append(m.register_forward_hook(hook))
    net.eval()
    net(x)
    for h in hooks:
        h.remove()
    return out


def layers(ifv, args):
    from data_free_plans import cluster_statistics

    (x_train, _), (x_test, y_test) = ifv.reference_data()
    model = ifv.reference_model("vgg11_bn", args.seed, train_if_missing=False)
    probe = x_test[:256]
    base = _bn_inputs(model, probe)
    from intrafusion_viz.merge._surgery import channel_features
    from intrafusion_viz.plan._centroids import _standardized

    norms = []  # spherical k-means normalises the standardised vectors: is any of them near zero?
    for g in ifv.find_groups(model, x_test[:1]):
        length = _standardized(channel_features(model, g).double()).norm(dim=1)
        norms.append(f"{float(length.min() / length.median()):.2f}")
    print(f"\nvgg11_bn seed {args.seed}: smallest standardised channel vector / the group's median, per group: "
          + ", ".join(norms))
    for label in ("IF-df", "fold"):
        res = _prune(ifv, model, x_test, args.sparsity, label)
        fixed = ifv.repair(res, model, mode="data-free")
        acc = ifv.accuracy(fixed, (x_test, y_test))
        clusters = cluster_statistics(ifv, model, res, x_train[:256])
        drift = ifv.layer_drift(model, res, probe, model=fixed)
        stats = _bn_inputs(fixed, probe)
        bns = list(stats)
        print(f"\nvgg11_bn seed {args.seed}, {label}, every group at {args.sparsity:.0%}, data-free repair: "
              f"{acc:.2f} % (logits top-1 agreement with the original {drift[-1]['agreement']:.1f} %)\n")
        print("| layer (n -> k) | largest cluster | singletons | corr. measured / estimated | drift corr | "
              "std ratio | measured / predicted std: median (p10-p90) | mean shift (median, sd) | dead |")
        print("|---|---:|---:|---|---:|---:|---|---:|---|")
        for i, r in enumerate(clusters):
            d = next((x for x in drift if x["group"] == r["group"] and x.get("pruned")), {})
            s = stats[bns[i]]
            q = torch.quantile(s["ratio"], torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
            print(f"| {r['layer']} ({r['n']} -> {r['k']}) | {r['max_size']} | {r['alone']} | "
                  f"{r['measured']:.2f} / {r['estimated']:.2f} | {d.get('corr', float('nan')):.3f} | "
                  f"{d.get('std_ratio', float('nan')):.2f} | {q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f}) | "
                  f"{s['shift'].abs().median():.2f} | {int(base[bns[i]]['dead'].sum())} -> {int(s['dead'].sum())} |")


def swap(ifv, args):
    import intrafusion_viz.plan._kmeans as fold_module

    (_, _), (x_test, y_test) = ifv.reference_data()
    model = ifv.reference_model("vgg11_bn", args.seed, train_if_missing=False)
    original = fold_module.kmeans
    state = {}

    def kmeans(x, k, n_init=10, max_iter=20, seed=0, spherical=False):  # the i-th group's clustering
        i = state["calls"]
        state["calls"] += 1
        return original(x, k, n_init=n_init, max_iter=max_iter, seed=state["seed_of"](i), spherical=spherical)

    def accuracy(seed_of):
        state.update(calls=0, seed_of=seed_of)
        res = _prune(ifv, model, x_test, args.sparsity, "IF-df")
        return ifv.accuracy(ifv.repair(res, model, mode="data-free"), (x_test, y_test))

    fold_module.kmeans = kmeans
    try:
        print(f"\nvgg11_bn seed {args.seed}, IF-df, every group at {args.sparsity:.0%}, data-free repair: k-means seed "
              f"{args.good} everywhere {accuracy(lambda i: args.good):.2f} %, seed {args.bad} everywhere "
              f"{accuracy(lambda i: args.bad):.2f} %\n")
        print(f"| group | seed {args.good} everywhere, seed {args.bad} in this group | "
              f"seed {args.bad} everywhere, seed {args.good} in this group |")
        print("|---|---:|---:|")
        for g in range(state["calls"]):
            a = accuracy(lambda i: args.bad if i == g else args.good)
            b = accuracy(lambda i: args.good if i == g else args.bad)
            print(f"| {g} | {a:.2f} | {b:.2f} |", flush=True)
    finally:
        fold_module.kmeans = original


def consumer(ifv, args):
    (x_train, _), (x_test, y_test) = ifv.reference_data()
    batch = x_train[:512]
    print("\n| seed, group | method | no repair | data-free | data-free + next BatchNorm's mean and variance "
          "measured | data-free + its mean measured | bn (512 images) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        seed, gi = map(int, case.split(":"))
        model = ifv.reference_model("vgg11_bn", seed, train_if_missing=False)
        base = ifv.accuracy(model, (x_test, y_test))
        for label in ("IF-df", "fold"):
            res = _prune(ifv, model, x_test, {gi: 0.7}, label)
            cells = [ifv.accuracy(res.model, (x_test, y_test)) - base]
            fixed = ifv.repair(res, model, mode="data-free")
            cells.append(ifv.accuracy(fixed, (x_test, y_test)) - base)
            norms = [m for m in fixed.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            nxt = norms[gi + 1]  # VGG: group gi's consumer is the next conv, whose BatchNorm is the next one
            seen = {}
            hook = nxt.register_forward_hook(lambda m, i, o: seen.__setitem__("x", i[0].detach().clone()))
            with torch.no_grad():
                fixed.eval()
                fixed(batch)
            hook.remove()
            x = seen["x"].double().movedim(1, 0).reshape(seen["x"].shape[1], -1)
            mean0, var0 = nxt.running_mean.clone(), nxt.running_var.clone()
            with torch.no_grad():
                nxt.running_mean.copy_(x.mean(1).to(mean0.dtype))
                nxt.running_var.copy_(x.var(1).to(var0.dtype))
                cells.append(ifv.accuracy(fixed, (x_test, y_test)) - base)
                nxt.running_var.copy_(var0)
                cells.append(ifv.accuracy(fixed, (x_test, y_test)) - base)
            cells.append(ifv.accuracy(ifv.repair(res, model, batch, mode="bn"), (x_test, y_test)) - base)
            print(f"| {seed}, G{gi} | {label} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |", flush=True)


def main(argv=None):
    import intrafusion_viz as ifv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", action="store_true")
    parser.add_argument("--swap", action="store_true")
    parser.add_argument("--consumer", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the reference model")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--good", type=int, default=1)
    parser.add_argument("--bad", type=int, default=0)
    parser.add_argument("--cases", nargs="+", default=["0:1", "0:2", "1:2", "1:3"], help="training seed:group")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.layers:
        layers(ifv, args)
    if args.swap:
        swap(ifv, args)
    if args.consumer:
        consumer(ifv, args)


if __name__ == "__main__":
    main()
