"""Our faithful ``method="fold"`` on the golden cells of Model Folding's code: logits and k-means objectives.

Per cell of ``../shared/golden/model_folding/cells.pt``: (a) given their labels, the relative logit error of our
folded network (as we fold, and with their BatchNorm convention ``running_var = 1``); (b) per group, the k-means
objective of our own clustering against theirs on the same vectors, and whether the labels are theirs.
Needs no checkout of theirs (the cells hold their results).

    python benchmarks/model_folding/golden_table.py            # writes benchmarks/results/model_folding_golden.md
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def their_name(name: str) -> str:
    return name.replace("classifier.6.", "classifier.")


def group_names(groups, cell):
    """Our group index -> their group name (matched by producers and BatchNorms)."""
    out = {}
    for their in cell["members"]:
        producers = {their_name(nm).rsplit(".", 1)[0] for nm, axis in cell["member_axes"][their]
                     if axis == 0 and nm.endswith(".weight")}
        (g,) = [g for g in groups if {m.name for m in g.members if m.role in ("out", "norm")} == producers]
        out[g.index] = their
    return out


def main():
    import intrafusion_viz as ifv
    from _bench_common import header, markdown_table, save_text
    from intrafusion_viz import models
    from intrafusion_viz.data import shared_path
    from intrafusion_viz.plan import _hartigan
    from intrafusion_viz.repair._fold_repair import fold_vectors

    torch.set_num_threads(1)
    golden, paper = shared_path("golden", "model_folding"), shared_path("golden", "paper")
    if golden is None or paper is None:
        raise SystemExit("../shared/golden/model_folding not found (set INTRAFUSION_VIZ_SHARED)")
    cells = torch.load(golden / "cells.pt", weights_only=True)
    x = torch.load(paper / "inputs.pt", weights_only=True)["eval"]
    logit_rows, group_rows = [], []
    for cell in cells:
        model = getattr(models, cell["model"])(num_classes=10)
        model.load_state_dict(torch.load(paper / f"{cell['model']}.pt", weights_only=True))
        model.eval()
        groups = ifv.find_groups(model, x[:1])
        names = group_names(groups, cell)
        vectors = {g.index: fold_vectors(model, g) for g in groups}
        # (a) their labels through our merge + repair
        lookup = [(vectors[g.index], torch.as_tensor(cell["labels"][names[g.index]])) for g in groups]
        original = _hartigan.fold_labels
        _hartigan.fold_labels = lambda v, k, s: next(lab for vec, lab in lookup if vec.shape == v.shape and torch.equal(vec, v))
        try:
            res = ifv.prune(model, x[:2], cell["sparsity"], method="fold", seed=cell["seed"])
        finally:
            _hartigan.fold_labels = original
        with torch.no_grad():
            ours = res.model(x)
            for m in res.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.running_var.fill_(1.0)
            theirs_convention = res.model(x)
        scale = float(cell["logits"].abs().max())
        logit_rows.append([cell["model"], f"{cell['sparsity']:.0%}", cell["seed"],
                           f"{float((ours - cell['logits']).abs().max()) / scale:.1e}",
                           f"{float((theirs_convention - cell['logits']).abs().max()) / scale:.1e}",
                           f"{float((cell['fused_logits'] - cell['unpruned_logits']).abs().max()) / float(cell['unpruned_logits'].abs().max()):.1e}"])
        print(logit_rows[-1], file=sys.stderr, flush=True)
        # (b) our clustering, the same run-seed stream
        seeds = _hartigan.FoldSeeds(cell["seed"])
        for g in groups:
            their = names[g.index]
            k = cell["k"][their]
            gram = _hartigan.scaled_gram(vectors[g.index])
            labels = _hartigan.fold_labels(vectors[g.index], k, seeds).numpy()
            theirs = _hartigan.kmeans_objective(gram, np.asarray(cell["labels"][their]), k)
            mine = _hartigan.kmeans_objective(gram, labels, k)
            group_rows.append([cell["model"], f"{cell['sparsity']:.0%}", cell["seed"], their, cell["n"][their], k,
                               f"{theirs:.4f}", f"{mine:.4f}", f"{(mine - theirs) / theirs:+.1e}",
                               "yes" if np.array_equal(labels, np.asarray(cell["labels"][their])) else "no"])
    same = sum(r[-1] == "yes" for r in group_rows)
    worse = sum(float(r[-2]) > 1e-6 for r in group_rows)
    text = header("python benchmarks/model_folding/golden_table.py") + "\n" \
        + "(a) their labels, our merge + DF_REPAIR: max |logit error| / max |their logit|\n\n" \
        + markdown_table(["model", "removed", "seed", "ours (exact eps)", "ours, their running_var = 1",
                          "their fusing's own eps error (fused vs unpruned)"], logit_rows) \
        + f"\n\n(b) our Hartigan k-means vs theirs on the same vectors: {same} of {len(group_rows)} groups with their "\
          f"labels exactly, {worse} with an objective more than 1e-6 above theirs\n\n" \
        + markdown_table(["model", "removed", "seed", "group", "n", "k", "their objective", "ours", "relative",
                          "same labels"], group_rows)
    save_text("model_folding_golden.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
