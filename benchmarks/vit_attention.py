"""Attention heads under Intra-Fusion: a converged torchvision ViT on MNIST, pruned without fine-tuning.

The reference ViT (``ifv.reference_model("vit", seed)``: patch 4, 4 layers, hidden 128, 4 heads, MLP 256,
trained on the MNIST 8,000-image split; trained and cached when missing) is pruned with l1 importance at
10 / 30 / 50 % in three scopes: every group, the residual stream group alone (it holds every
``nn.MultiheadAttention``) and the four MLP hidden groups alone.  Columns:

* ``default``: selection, the MultiheadAttention pruned as Torch-Pruning does (the same indices for the
  residual and the q/k/v dims);
* ``default + q scale``: the same, then the q rows and bias multiplied by ``sqrt(k / n)`` (the softmax
  temperature compensation Intra-Fusion makes), to decide whether default pruning should do it too;
* ``IF, residual skipped``: Intra-Fusion as it was before the attention merge existed (the residual
  stream group left unpruned, ``PruneResult.skipped``): the MLP groups only;
* ``IF, residual merged``: Intra-Fusion with the residual plan and the per-head q.k / v plans;
* ``IF merged, no q scale``: the same with ``OTConfig(q_scale="none")`` (no temperature compensation);
* ``IF, heads selected``: the residual stream merged, but each head's q/k/v dims pruned by selection (the
  same kept dims, no per-head merge; q scale kept): what the per-head plans add (an ablation).

Accuracy (%) on the 2,000 test images, mean ± std over the seeds with each seed in brackets; parameters
after pruning.  Output: stdout and ``benchmarks/results/vit_attention.md``; each seed's cells are cached in
``benchmarks/results/vit_attention.json`` (keyed by the checkpoint's training date; ``--force`` re-measures).

    python benchmarks/vit_attention.py --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, cache_key, header, markdown_table, mean_spread, save_cache, save_text  # noqa: E402

CACHE = RESULTS / "vit_attention.json"

COLUMNS = ("default", "default + q scale", "IF, residual skipped", "IF, residual merged", "IF merged, no q scale",
           "IF, heads selected")
SCOPES = ("every group", "residual stream alone", "MLP groups alone")


@torch.no_grad()
def scale_queries(model: nn.Module, original: nn.Module) -> nn.Module:
    """Multiply every MultiheadAttention's q rows and bias by ``sqrt(k / n)`` (``k``, ``n``: embed_dim after
    and before), in place: the temperature compensation Intra-Fusion makes, applied to default pruning."""
    before = {name: m.embed_dim for name, m in original.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            e = m.embed_dim
            factor = math.sqrt(e / before[name])
            m.in_proj_weight[:e] *= factor
            if m.in_proj_bias is not None:
                m.in_proj_bias[:e] *= factor
    return model


def heads_selected(plan):
    """The same AttentionPlan with its per-head merges replaced by selections of the same kept dims."""
    import dataclasses

    import intrafusion_viz as ifv

    qk = ifv.merge_matrices(ifv.selection_plan(plan.n, plan.qk_kept))
    v = ifv.merge_matrices(ifv.selection_plan(plan.n, plan.v_kept))
    return dataclasses.replace(plan, qk_out_map=qk[0], qk_in_map=qk[1], v_out_map=v[0], v_in_map=v[1])


def run_seed(seed: int, sparsities, data, progress: bool):
    import intrafusion_viz as ifv

    (_, _), (x_test, y_test) = data
    model = ifv.reference_model("vit", seed=seed, progress=progress)
    example = x_test[:2]
    groups = ifv.find_groups(model, example)
    residual = [g.index for g in groups if any(isinstance(mod, nn.MultiheadAttention) for _, _, mod in g.layers)]
    mlp = [g.index for g in groups if g.index not in residual]
    scopes = {"every group": residual + mlp, "residual stream alone": residual, "MLP groups alone": mlp}
    base = ifv.accuracy(model, (x_test, y_test))
    rows = {}
    for scope, chosen in scopes.items():
        for s in sparsities:
            cells = {}
            d = ifv.prune(model, example, s, method="default", importance="l1", groups=chosen)
            cells["default"] = (ifv.accuracy(d.model, (x_test, y_test)), d.params_after)
            scale_queries(d.model, model)
            cells["default + q scale"] = (ifv.accuracy(d.model, (x_test, y_test)), d.params_after)
            new = ifv.prune(model, example, s, method="intra-fusion", importance="l1", groups=chosen)
            assert not new.skipped, new.skipped
            cells["IF, residual merged"] = (ifv.accuracy(new.model, (x_test, y_test)), new.params_after)
            free = ifv.prune(model, example, s, method="intra-fusion", importance="l1", groups=chosen,
                             config=ifv.OTConfig(q_scale="none"))
            cells["IF merged, no q scale"] = (ifv.accuracy(free.model, (x_test, y_test)), free.params_after)
            from intrafusion_viz.merge import _attention

            planner = _attention.attention_plan
            _attention.attention_plan = lambda *a, **kw: heads_selected(planner(*a, **kw))
            try:
                sel = ifv.prune(model, example, s, method="intra-fusion", importance="l1", groups=chosen)
            finally:
                _attention.attention_plan = planner
            cells["IF, heads selected"] = (ifv.accuracy(sel.model, (x_test, y_test)), sel.params_after)
            old_groups = [i for i in chosen if i not in residual]
            if old_groups:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    old = ifv.prune(model, example, s, method="intra-fusion", importance="l1", groups=old_groups)
                cells["IF, residual skipped"] = (ifv.accuracy(old.model, (x_test, y_test)), old.params_after)
            else:  # the group was skipped: the model left as it was
                cells["IF, residual skipped"] = (base, sum(p.numel() for p in model.parameters()))
            rows[(scope, s)] = cells
            print(f"seed {seed} {scope} {s:.0%}: " + ", ".join(f"{c} {a:.2f}" for c, (a, _) in cells.items()),
                  flush=True)
    return base, sum(p.numel() for p in model.parameters()), rows


def main(argv=None):
    from intrafusion_viz.evaluation._reference import reference_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="re-measure seeds that are cached")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for vit_attention.md (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    data = reference_data()
    from intrafusion_viz.evaluation._reference import reference_dir, reference_model

    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    per_seed = {}
    for seed in args.seeds:
        reference_model("vit", seed=seed, progress=False)  # trained (and cached) when missing
        trained = int((reference_dir() / f"vit_s{seed}.pt").stat().st_mtime)
        key = cache_key("vit", seed, trained, *args.sparsities)
        if key not in cache or args.force:
            base, params, rows = run_seed(seed, args.sparsities, data, progress=False)
            cache[key] = dict(base=base, params=params,
                              rows=[[scope, s, col, acc, p] for (scope, s), cells in rows.items()
                                    for col, (acc, p) in cells.items()])
            save_cache(CACHE, cache)
        entry = cache[key]
        rows = {}
        for scope, s, col, acc, p in entry["rows"]:
            rows.setdefault((scope, s), {})[col] = (acc, p)
        per_seed[seed] = (entry["base"], entry["params"], rows)
    bases = [per_seed[s][0] for s in args.seeds]
    params = per_seed[args.seeds[0]][1]

    def cell(scope, s, col):
        accs = [per_seed[seed][2][(scope, s)][col][0] for seed in args.seeds]
        p = per_seed[args.seeds[0]][2][(scope, s)][col][1]
        seeds = "" if len(accs) == 1 else " [" + ", ".join(f"{a:.2f}" for a in accs) + "]"
        return f"{mean_spread(accs)}{seeds} ({p / 1e3:.0f}k)"

    table = markdown_table(["scope", "sparsity"] + list(COLUMNS),
                           [[scope, f"{s:.0%}"] + [cell(scope, s, c) for c in COLUMNS]
                            for scope in SCOPES for s in args.sparsities])
    text = (header("python benchmarks/vit_attention.py " + " ".join(argv if argv is not None else sys.argv[1:]))
            + f"- seeds: {', '.join(map(str, args.seeds))}; unpruned accuracy {mean_spread(bases)} "
            f"[{', '.join(f'{b:.2f}' for b in bases)}], {params / 1e3:.0f}k parameters; "
            f"wall time {time.perf_counter() - start:.0f} s\n\n"
            "Accuracy (%) without fine-tuning, l1 importance; parameters after pruning in brackets.\n\n"
            + table + "\n")
    print(text)
    save_text("vit_attention.md", text, args.out)


if __name__ == "__main__":
    main()
