"""Score what you merge: does scoring l1 on the BatchNorm-folded weights (``OTConfig(score_folded=True)``)
change accuracy?  A VGG-style BatchNorm CNN (width 16) trained 4 epochs on 6,000 real MNIST images; every
group alone and all groups together at 30/50/70 %, three methods, l1 importance, no fine-tuning, tested on
2,000 held-out images.  Prints accuracy with unfolded / folded scoring per cell and the mean difference.

    python benchmarks/score_what_you_merge.py      # IFV_CHECKPOINT=path reuses a trained model
"""
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import intrafusion_viz as ifv  # noqa: E402
from _bench_common import DEFAULT_MNIST, load_mnist, mnist_vgg  # noqa: E402

METHODS = (("default", "barycentric"), ("intra-fusion", "barycentric"), ("intra-fusion", "paper"))


def main():
    torch.set_num_threads(1)
    (xtr, ytr), (xte, yte) = load_mnist(DEFAULT_MNIST, 6000, 2000, seed=0)
    checkpoint = os.environ.get("IFV_CHECKPOINT", "/tmp/ifv_score_folded_vgg.pt")
    model = mnist_vgg(width=16)
    if os.path.exists(checkpoint):
        model.load_state_dict(torch.load(checkpoint))
    else:
        ifv.train(model, (xtr, ytr), epochs=4, seed=0, progress=False)
        torch.save(model.state_dict(), checkpoint)
    model.eval()
    print("original", ifv.accuracy(model, (xte, yte)), flush=True)
    x = xtr[:1]
    scopes = [[g.index] for g in ifv.find_groups(model, x)] + [None]
    diffs = {m: [] for m in METHODS}
    for method, fusion in METHODS:
        for scope in scopes:
            for s in (0.3, 0.5, 0.7):
                accs = [ifv.accuracy(ifv.prune(model, x, s, method=method, groups=scope, importance="l1",
                                               config=ifv.OTConfig(fusion=fusion, score_folded=folded)).model,
                                     (xte, yte)) for folded in (False, True)]
                diffs[method, fusion].append(accs[1] - accs[0])
                print(method, fusion, "all" if scope is None else scope[0], s, accs, flush=True)
    for (method, fusion), d in diffs.items():
        print(f"{method}/{fusion}: mean diff folded - unfolded {statistics.mean(d):+.2f} pts over {len(d)} cells; "
              f"wins {sum(v > 0 for v in d)}, losses {sum(v < 0 for v in d)}, ties {sum(v == 0 for v in d)}")


if __name__ == "__main__":
    main()
