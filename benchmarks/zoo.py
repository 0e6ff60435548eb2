"""Every torchvision classification model through find_groups and prune, next to Torch-Pruning's own pruner.

Random weights (``weights=None``), the smallest input size of 32, 64, 128, 224, 299 on which the model
runs, batch 2 (so BatchNorm runs in train mode).  Per model: groups and mergeable groups, parameters
before and after default pruning and Intra-Fusion at 30 % and 50 %, whether the pruned models keep the
output shape and give finite outputs (eval and train mode), the relative output change at sparsity 0,
times, and Torch-Pruning's ``MagnitudePruner`` at 30 % on the same model and input.

Each model runs in its own forked process (one torch thread, an address-space cap, a CPU-time limit and
a wall-clock limit; torch and the toolkit are imported once, in the parent), so one heavy model cannot
stop the run; failures are listed, never skipped.  Results are cached per model in
benchmarks/results/zoo.json (rerun to resume; ``--force`` re-measures); the table goes to stdout and
benchmarks/results/zoo.md.

    nice -n 10 python benchmarks/zoo.py                       # every model, smallest first
    nice -n 10 python benchmarks/zoo.py --models resnet18 vit_b_16 --force
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, header, markdown_table  # noqa: E402

CACHE = RESULTS / "zoo.json"
SIZES = (32, 64, 128, 224, 299)
SPARSITIES = (0.0, 0.3, 0.5)
TP_SECONDS = 240
METHODS = ("default", "intra-fusion")
EXTRA_KWARGS = {  # the auxiliary heads are part of what a user trains; random init without scipy's slow truncnorm
    "googlenet": dict(aux_logits=True, init_weights=False),
    "inception_v3": dict(aux_logits=True, init_weights=False),
}


def _short(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _logits(out):
    """The main output of a model (GoogLeNet / Inception v3 return a named tuple in train mode)."""
    import torch

    if torch.is_tensor(out):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _check(model, x, ref_shape):
    """(shape kept, finite) in eval mode, and whether train mode runs with the same shape."""
    import torch

    if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):  # torchvision ViT reshapes with a stored int,
        model.hidden_dim = model.conv_proj.out_channels  # which Torch-Pruning's own test sets after pruning too

    with torch.no_grad():
        model.eval()
        y = _logits(model(x))
        ok_shape, finite = tuple(y.shape) == ref_shape, bool(torch.isfinite(y).all())
        model.train()
        try:
            yt = _logits(model(x))
            train = tuple(yt.shape) == ref_shape and bool(torch.isfinite(yt).all())
        except Exception as err:
            train = _short(err, 100)
        model.eval()
    return ok_shape, finite, train, y


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout(f"no result in {TP_SECONDS} s (wall clock)")


def _output_layers(model, num_classes: int):
    """The classifier layers (SqueezeNet's is a 1x1 conv; GoogLeNet and Inception v3 have auxiliary ones)."""
    import torch.nn as nn

    return [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
            or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)]


def run_one(name: str) -> dict:
    """Measure one model (runs inside the worker process)."""
    import torch
    import torchvision
    import torch_pruning as tp

    import intrafusion_viz as ifv

    torch.set_num_threads(1)
    torch.manual_seed(0)
    rec = {"model": name}
    t0 = time.perf_counter()
    model = torchvision.models.get_model(name, weights=None, **EXTRA_KWARGS.get(name, {})).eval()
    rec["params"] = sum(p.numel() for p in model.parameters())
    x = None
    for size in SIZES:  # the smallest on which the model runs in both modes (Inception v3's aux head needs 299)
        try:
            with torch.no_grad():
                cand = torch.randn(2, 3, size, size)
                copy.deepcopy(model).train()(cand)
                y0 = _logits(model(cand))
            x = cand
            break
        except Exception:
            continue
    if x is None:
        rec["error"] = f"runs on none of the input sizes {SIZES}"
        return rec
    rec["input"] = size
    ref_shape = tuple(y0.shape)
    num_classes = ref_shape[-1]

    # Torch-Pruning's own pruner at 30 %, output layer(s) left out, as its README shows; given TP_SECONDS
    # of wall-clock time (its tracer does not finish on Swin / MaxViT)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TP_SECONDS)
    try:
        t = time.perf_counter()
        m = torchvision.models.get_model(name, weights=None, **EXTRA_KWARGS.get(name, {})).eval()
        m.load_state_dict(model.state_dict())
        heads = [a.num_heads for a in m.modules() if isinstance(a, torch.nn.MultiheadAttention)]
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=0.3, ignored_layers=_output_layers(m, num_classes),
                                           round_to=heads[0] if heads else None)  # as Torch-Pruning's ViT test
        pruner.step()
        ok_shape, finite, train, _ = _check(m, x, ref_shape)
        rec["tp"] = dict(ok=ok_shape and finite, params_after=sum(p.numel() for p in m.parameters()),
                         train=train, time=time.perf_counter() - t)
        del m, pruner
    except (Exception, _Timeout) as err:
        rec["tp"] = dict(ok=False, error=_short(err))
    finally:
        signal.alarm(0)

    try:
        t = time.perf_counter()
        groups = ifv.find_groups(model, x)
        rec["trace_time"] = time.perf_counter() - t
        rec["groups"] = len(groups)
        rec["mergeable"] = sum(_mergeable(g) for g in groups)
    except Exception as err:
        rec["trace_error"] = _short(err, 300)
        rec["total_time"] = time.perf_counter() - t0
        return rec

    for method in METHODS:
        for s in SPARSITIES:
            key = f"{method}@{s:g}"
            t = time.perf_counter()
            try:
                res = ifv.prune(model, x, s, method=method)
                ok_shape, finite, train, y = _check(res.model, x, ref_shape)
                cell = dict(params_after=res.params_after, shape=ok_shape, finite=finite, train=train,
                            time=time.perf_counter() - t, skipped=len(getattr(res, "skipped", None) or []))
                if s == 0.0:
                    cell["change"] = float((y - y0).norm() / y0.norm().clamp_min(1e-30))
                rec[key] = cell
                del res
            except Exception as err:
                rec[key] = dict(error=_short(err, 300), time=time.perf_counter() - t)
    rec["total_time"] = time.perf_counter() - t0
    return rec


def _mergeable(group) -> bool:
    if hasattr(group, "mergeable"):
        return bool(group.mergeable)
    from intrafusion_viz.merge._surgery import _check_mergeable, _slots

    try:
        _check_mergeable(group, False)
        for m in group.members:
            _slots(m, group.size)
        return True
    except Exception:
        return False


def _worker(name: str, out: str, memory_gb: float, cpu_s: float) -> None:
    """Child process: caps, then one model; the record (or the failure) goes to ``out`` as JSON."""
    limit = int(memory_gb * 2 ** 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CPU, (int(cpu_s), int(cpu_s) + 5))
    try:
        rec = run_one(name)
    except BaseException as err:  # noqa: BLE001 - the record says what failed
        rec = {"model": name, "error": _short(err, 300), "traceback": traceback.format_exc()[-2000:]}
    rec["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # of this child (Linux: KiB)
    Path(out).write_text(json.dumps(rec))


def measure(name: str, timeout: float, memory_gb: float, wall_timeout: float) -> dict:
    """One model in a forked child (torch, torchvision and the toolkit are imported once, in the parent)."""
    import multiprocessing as mp

    out = RESULTS / f".zoo_{name}.json"
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = mp.get_context("fork").Process(target=_worker, args=(name, str(out), memory_gb, timeout))
    proc.start()
    proc.join(wall_timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        rec = {"model": name, "error": f"wall-clock timeout after {wall_timeout:g} s"}
    elif out.exists():
        rec = json.loads(out.read_text())
    else:
        why = "CPU time limit" if proc.exitcode in (-9, -24) else f"memory cap {memory_gb:g} GB?"
        rec = {"model": name, "error": f"worker died (exit {proc.exitcode}; {why}; limits: "
               f"{timeout:g} CPU s, {memory_gb:g} GB)"}
    out.unlink(missing_ok=True)
    rec["wall_time"] = time.perf_counter() - t
    return rec


def _fmt_params(v) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v / 1e3:.1f}k"


def _cell(rec: dict, key: str) -> str:
    c = rec.get(key)
    if c is None:
        return "–"
    if "error" in c:
        return "refused" if "UnsupportedLayerError" in c["error"] else "fails"
    bad = []
    if not c.get("shape"):
        bad.append("shape")
    if not c.get("finite"):
        bad.append("non-finite")
    if c.get("train") is not True:
        bad.append("train mode fails")
    if c.get("skipped"):
        bad.append(f"{c['skipped']} group{'' if c['skipped'] == 1 else 's'} skipped")
    return _fmt_params(c["params_after"]) + (f" ({', '.join(bad)})" if bad else "")


def _works(rec: dict, method: str) -> bool:
    cells = [rec.get(f"{method}@{s:g}", {}) for s in SPARSITIES]
    return all("error" not in c and c.get("shape") and c.get("finite") and c.get("train") is True for c in cells) \
        and all(rec.get(f"{method}@0", {}).get("change", 1.0) <= 1e-5 for _ in (0,))


def _size(name: str) -> int:
    """Parameter count from torchvision's weight metadata (small models first: a partial run covers most)."""
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except Exception:
        return 1 << 40


def table(records: list) -> str:
    rows, notes = [], []
    for rec in records:
        name = rec["model"]
        if rec.get("missing"):
            continue
        if "error" in rec:
            rows.append([name, "–", "–", "–", _fmt_params(rec["params"]) if "params" in rec else "–",
                         "–", "–", "–", "–", "–", "–", f"{rec.get('wall_time', 0):.0f}"])
            notes.append(f"- {name}: {rec['error']}")
            continue
        tpr = rec.get("tp", {})
        tp_cell = (_fmt_params(tpr["params_after"]) + ("" if tpr.get("train") is True else " (train mode fails)")
                   if tpr.get("ok") else "fails")
        if "error" in tpr:
            notes.append(f"- {name}, Torch-Pruning: {tpr['error']}")
        changes = [rec.get(f"{m}@0", {}).get("change") for m in METHODS]
        change = "–" if any(c is None for c in changes) else f"{max(changes):.1e}"
        if "trace_error" in rec:
            notes.append(f"- {name}, find_groups: {rec['trace_error']}")
        for key in (f"{m}@{s:g}" for m in METHODS for s in SPARSITIES):
            if "error" in rec.get(key, {}):
                notes.append(f"- {name}, {key}: {rec[key]['error']}")
                break
        rows.append([name, rec["input"], rec.get("groups", "fails"), rec.get("mergeable", "–"),
                     _fmt_params(rec["params"]), tp_cell,
                     _cell(rec, "default@0.3"), _cell(rec, "default@0.5"),
                     _cell(rec, "intra-fusion@0.3"), _cell(rec, "intra-fusion@0.5"), change,
                     (f"{rec['trace_time']:.1f}" if "trace_time" in rec else "–") + f" / {rec.get('total_time', 0):.0f}"])
    cols = ["model", "input", "groups", "mergeable", "params", "Torch-Pruning 30 %", "default 30 %",
            "default 50 %", "IF 30 %", "IF 50 %", "sparsity-0 change", "trace / total s"]
    missing = [r["model"] for r in records if r.get("missing")]
    records = [r for r in records if not r.get("missing")]
    n = len(records)
    tp_ok = sum(bool(r.get("tp", {}).get("ok")) for r in records)
    ours = {m: sum(_works(r, m) for r in records if "error" not in r) for m in METHODS}
    whole = sum(_works(r, "intra-fusion") and not any(r.get(f"intra-fusion@{s:g}", {}).get("skipped")
                                                       for s in SPARSITIES) for r in records if "error" not in r)
    summary = (f"Of {n} models: Torch-Pruning prunes {tp_ok}, our default pruning {ours['default']}, "
               f"our Intra-Fusion {ours['intra-fusion']} "
               + ("(every group merged in each)" if whole == ours["intra-fusion"] else
                  f"({whole} with every group merged, the others with some groups skipped)")
               + " (30 % and 50 %: output shape kept, finite, runs in train mode; "
               "sparsity 0 changes the output by ≤ 1e-5 relative).")
    if missing:
        summary += f" Not measured in this run ({len(missing)}): {', '.join(missing)}."
    return "\n".join([summary, "", markdown_table(cols, rows), "", "Failures and refusals (first per model):", ""]
                     + (notes or ["- none"]))


def _not_run(name: str, max_params: float, memory_gb: float) -> str:
    """Why a model over ``--max-params`` was not run: what its parameters alone take."""
    gb = _size(name) * 4 / 2 ** 30
    return (f"not run here: {_size(name) / 1e6:.0f}M parameters (over --max-params {max_params / 1e6:.0f}M) are "
            f"{gb:.1f} GB per float32 copy; the models measured here peak at 10-27 times their parameter bytes "
            f"(peak_rss_mb: resnext101_64x4d 4.7 GB for 0.33 GB), so about {10 * gb:.0f} GB or more, over the "
            f"{memory_gb:g} GB cap of this shared machine")


def _store(name: str, rec: dict) -> dict:
    """Write one record into the cache, re-read first so that runs side by side do not drop each other's."""
    import os

    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    cache[name] = rec
    tmp = CACHE.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    tmp.replace(CACHE)
    return cache


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="model names (default: every torchvision classifier)")
    parser.add_argument("--force", action="store_true", help="re-measure models already in the cache")
    parser.add_argument("--report", action="store_true",
                        help="only print the table of every model from the cache (unmeasured ones listed)")
    parser.add_argument("--timeout", type=float, default=300.0, help="CPU seconds per model (the machine may be loaded)")
    parser.add_argument("--wall-timeout", type=float, default=900.0, help="wall-clock seconds per model")
    parser.add_argument("--memory-gb", type=float, default=12.0, help="address-space cap per model process")
    parser.add_argument("--max-params", type=float, default=400e6,
                        help="models with more parameters are recorded as not run (the machine's memory)")
    args = parser.parse_args(argv)
    import torch
    import torch_pruning  # noqa: F401 - imported once here, shared by the forked children
    import torchvision

    import intrafusion_viz  # noqa: F401

    torch.set_num_threads(1)

    names = args.models or sorted(torchvision.models.list_models(module=torchvision.models), key=_size)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    for name in [] if args.report else names:
        cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}  # another run may have filled it in
        if name in cache and not args.force:
            continue
        if _size(name) > args.max_params:
            rec = {"model": name, "params": _size(name), "error": _not_run(name, args.max_params, args.memory_gb)}
        else:
            rec = measure(name, args.timeout, args.memory_gb, args.wall_timeout)
        cache = _store(name, rec)
        status = rec.get("error") or rec.get("trace_error") or "ok"
        print(f"{name}: {rec.get('wall_time', 0):.0f} s, {status[:120]}", file=sys.stderr, flush=True)
    text = header("python benchmarks/zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])) + "\n" \
        + table([cache.get(n, {"model": n, "missing": True}) for n in names])
    (RESULTS / "zoo.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
