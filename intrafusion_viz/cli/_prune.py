"""``intrafusion-viz prune`` and ``intrafusion-viz groups``: your checkpoint in, a pruned checkpoint and a report out."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from ._model import UserError, example_input, load_model, open_dataset, parse_arch_args, user_errors  # noqa: F401

__all__ = ["run", "run_groups", "prune_checkpoint", "group_rows", "result_record"]


def _say(args, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, flush=True)


def _setup(args):
    """Model (on its device), dataset, example input and what the report says about them."""
    model, info = load_model(args.checkpoint, args.arch, parse_arch_args(args.arch_args), args.trust_pickle)
    dataset, data_desc, size, channels = open_dataset(
        getattr(args, "data", None), getattr(args, "data_root", "data"), getattr(args, "download", False),
        getattr(args, "train_split", False), args.input_size, args.channels, getattr(args, "mean", None),
        getattr(args, "std", None))
    try:
        device = torch.device(args.device)
        model = model.to(device)
    except (RuntimeError, AssertionError) as err:
        raise UserError(f"--device {args.device}: {err}") from err
    example = (dataset[0][0][None] if dataset is not None
               else example_input(channels, size, getattr(args, "seed", 0))).to(device)
    try:
        with torch.no_grad():
            model(example)
    except RuntimeError as err:
        raise UserError(f"the model does not run on an input of shape {tuple(example.shape)} ({err}); set "
                        "--input-size and --channels to what it expects") from err
    return model, info, dataset, data_desc, example


def group_rows(groups) -> list:
    """One plain dict per group: index, paper label, name, channels, mergeable, reason, members."""
    return [dict(index=g.index, paper_group=f"G{g.paper_index}", name=g.name, size=g.size,
                 mergeable=bool(g.mergeable), reason=g.unmergeable_reason or "",
                 members=[[m.name, m.role, m.layer_type] for m in g.members]) for g in groups]


def run_groups(args) -> int:
    """The ``groups`` subcommand: print the model's groups."""
    from ..groups import find_groups

    model, info, _, _, example = _setup(args)
    groups = find_groups(model, example)
    print(f"{type(model).__name__} ({info['format']}, {sum(p.numel() for p in model.parameters()):,} parameters): "
          f"{len(groups)} groups")
    print(f"{'index':>5}  {'paper':>5}  {'channels':>8}  {'layers':>6}  {'mergeable':<9}  name")
    for row in group_rows(groups):
        print(f"{row['index']:>5}  {row['paper_group']:>5}  {row['size']:>8}  {len(row['members']):>6}  "
              f"{'yes' if row['mergeable'] else 'no':<9}  {row['name']}" + (f"  ({row['reason']})" if row['reason'] else ""))
        if getattr(args, "members", False):
            for name, role, layer_type in row["members"]:
                print(f"{'':>38}{role:<10} {layer_type:<16} {name}")
    return 0


def _sparsity_spec(items, groups):
    """One float, or ``{group: sparsity}`` from ``[(None | key, value)]`` (a base value first covers all groups)."""
    base = [v for k, v in items if k is None]
    per_group = [(k, v) for k, v in items if k is not None]
    if len(base) > 1:
        raise UserError(f"--sparsity has {len(base)} values for every group; give one (plus GROUP=S items)")
    if not per_group:
        return base[0] if base else 0.5
    spec = {g.index: base[0] for g in groups} if base else {}
    names = {g.name: g.index for g in groups} | {f"G{g.paper_index}": g.index for g in groups}
    for key, value in per_group:
        index = key if isinstance(key, int) else names.get(key)
        if index is None or not any(g.index == index for g in groups):
            known = ", ".join(f"{g.index}={g.name}" for g in groups[:8])
            raise UserError(f"--sparsity {key}={value}: no such group; groups are {known}"
                            f"{' ...' if len(groups) > 8 else ''} (`intrafusion-viz groups` lists them)")
        spec[index] = value
    return spec


def _config(name):
    from ..plan import OTConfig

    if name is None:  # the method's own (or, with no method either, the default call's)
        return None
    return {"default": OTConfig, "paper": OTConfig.paper, "data-free": OTConfig.data_free,
            "capped": OTConfig.capped}[name]()


def _evaluate(model, dataset, args, label: str):
    from tqdm.auto import tqdm

    from ..data import loader_for
    from ..evaluation._train import accuracy

    loader = loader_for(dataset, batch_size=args.batch_size, limit=args.eval_samples)
    batches = tqdm(loader, desc=f"accuracy {label}", leave=False, disable=args.quiet)
    return accuracy(model, batches, device=torch.device(args.device))


def _macs_params(model, example):
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune_checkpoint(args) -> dict:
    """Load, prune, repair, evaluate and save; returns the result record the report is drawn from."""
    from ..groups import find_groups
    from ..pruning import prune
    from ..repair import repair
    from ..data import example_batch

    start = time.perf_counter()
    model, info, dataset, data_desc, example = _setup(args)
    _say(args, f"loaded {type(model).__name__} from {args.checkpoint} ({info['format']}); data: {data_desc}")
    needs_data = args.importance == "taylor" or args.repair in ("bn", "repair")
    if needs_data and dataset is None:
        what = "--importance taylor" if args.importance == "taylor" else f"--repair {args.repair}"
        raise UserError(f"{what} needs data: give --data (an image folder or torchvision:NAME)")
    groups = find_groups(model, example)
    spec = _sparsity_spec(args.sparsity, groups)
    batch = None
    if dataset is not None:
        x, y = example_batch(dataset, n=min(args.repair_samples, len(dataset)), seed=args.seed)
        batch = (x.to(example.device), y.to(example.device))
    before = _evaluate(model, dataset, args, "before") if dataset is not None else None
    prune_repair = args.repair if args.repair in ("auto", "none", "data-free", "synthetic") else "none"
    result = prune(model, example, spec, method=args.method, importance=args.importance, config=_config(args.config),
                   batch=batch, seed=args.seed, progress=not args.quiet, repair=prune_repair,
                   on_unmergeable=args.on_unmergeable)
    pruned = result.model
    if args.repair in ("bn", "repair"):
        _say(args, f"repair ({args.repair}) on {len(batch[0])} samples")
        pruned = repair(result, model, batch, mode=args.repair)
    after = _evaluate(pruned, dataset, args, "after") if dataset is not None else None
    macs_before, params_before = _macs_params(model, example)
    macs_after, params_after = _macs_params(pruned, example)
    record = result_record(result, groups, model, dict(
        checkpoint=str(args.checkpoint), format=info["format"], arch=info["arch"] or type(model).__name__,
        arch_args=info["arch_args"], data=data_desc, input_shape=list(example.shape[1:]), method=result.method,
        importance=args.importance, config=args.config or ("default call" if args.method is None else "default"),
        repair=args.repair, seed=args.seed,
        sparsity=" ".join(f"{k}={v:g}" if k is not None else f"{v:g}" for k, v in args.sparsity),
        device=str(args.device)))
    record.update(accuracy_before=before, accuracy_after=after, macs_before=macs_before, macs_after=macs_after,
                  params_before=params_before, params_after=params_after,
                  eval_samples=None if dataset is None else min(args.eval_samples, len(dataset)),
                  elapsed_s=time.perf_counter() - start)
    _save(pruned, info, record, args)
    return record


def _plan_store(plan: torch.Tensor):
    """A plan as its nonzeros when sparse (exact and selection plans), else dense float32."""
    plan = plan.detach().cpu()
    nz = plan.nonzero(as_tuple=False)
    if len(nz) * 3 < plan.numel():
        return dict(shape=list(plan.shape), rows=nz[:, 0].int(), cols=nz[:, 1].int(),
                    values=plan[nz[:, 0], nz[:, 1]].float())
    return dict(shape=list(plan.shape), dense=plan.float())


def result_record(result, groups, model, settings: dict) -> dict:
    """What the report needs, as plain values and tensors (safe to load with ``weights_only=True``)."""
    pruned = []
    for g in result.groups:
        pruned.append(dict(index=g.index, paper_index=g.paper_index, name=g.name, n=g.n, k=g.k,
                           sparsity=float(g.sparsity), kept=g.kept.detach().cpu().long(),
                           importance=g.importance.detach().cpu().double(), method=g.method,
                           has_cost=g.cost is not None and result.method != "default",
                           plan=_plan_store(g.plan)))
    members = {m[0] for row in group_rows(groups) for m in row["members"]}
    return dict(model=type(model).__name__, settings=settings, groups=group_rows(groups), pruned=pruned,
                layer_order=[name for name, _ in model.named_modules() if name in members],
                skipped=[[int(i), str(n), str(r)] for i, n, r in result.skipped], method=result.method,
                ot_config={k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                           for k, v in dataclasses.asdict(result.config).items()})


def _save(pruned, info, record, args) -> None:
    from ..evaluation._train import save_checkpoint

    out = Path(args.out)
    if info["arch"] is not None:
        save_checkpoint(pruned, out, cli=dict(arch=info["arch"], arch_args=info["arch_args"]), result=record)
    else:  # a whole model came in: no architecture to rebuild from, so the whole pruned model goes out too
        save_checkpoint(pruned, out, result=record)
        whole = out.with_name(out.stem + ".model.pt")
        torch.save(pruned, whole)
        record["settings"]["whole model"] = str(whole)
        save_checkpoint(pruned, out, result=record)


def run(args) -> int:
    """The ``prune`` subcommand."""
    from ._report import write_prune_report

    record = prune_checkpoint(args)
    report = Path(args.report) if args.report else Path(args.out).with_suffix(".html")
    write_prune_report(record, report, max_plans=args.max_plans)
    acc = ("" if record["accuracy_before"] is None else
           f"; accuracy {record['accuracy_before']:.2f}% -> {record['accuracy_after']:.2f}% "
           f"on {record['eval_samples']} samples")
    print(f"pruned {len(record['pruned'])} groups: {record['params_before']:,} -> {record['params_after']:,} "
          f"parameters, {record['macs_before']:,} -> {record['macs_after']:,} MACs{acc}")
    print(f"pruned checkpoint: {args.out}\nreport: {report}")
    return 0
