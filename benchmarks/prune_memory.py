"""Peak memory and time of ``prune`` on every group of large torchvision models, before and after a change.

Each case (model, method, sparsity, code) runs in a fresh process with one torch thread: build the model
(random weights), ``prune(model, x, sparsity, method=...)`` on every group, then read the peak RSS of
the process (``ru_maxrss``, torch and the model included) and the wall and CPU seconds of the prune.
"after" is the code this script sits in; "before" is any other checkout of the package (``--before
DIR``, e.g. main's code exported with ``git archive``), imported through ``PYTHONPATH``.

    nice -n 10 python benchmarks/prune_memory.py                               # after only
    git -C /work/main archive main | tar -x -C /tmp/ifv_main                  # a copy of main's code
    nice -n 10 python benchmarks/prune_memory.py --before /tmp/ifv_main        # before and after
    nice -n 10 python benchmarks/prune_memory.py --models resnet50:32:2 --sparsities 0.3

Results are cached in benchmarks/results/prune_memory.json per (code, model, method, sparsity), so the
before and after cases can run at different times (``--only before``: the heavy ones, alone on the
machine); ``--force`` re-measures, ``--report`` prints the table from the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import RESULTS, cache_key, header, markdown_table, save_cache  # noqa: E402

CACHE = RESULTS / "prune_memory.json"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ("resnet50:32:2", "convnext_large:32:2", "vit_l_16:224:1")

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch, torchvision, intrafusion_viz as ifv
torch.set_num_threads(1)
name, size, batch, method, sparsity = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
torch.manual_seed(0)
model = torchvision.models.get_model(name, weights=None).eval()
x = torch.randn(batch, 3, size, size)
params = sum(p.numel() for p in model.parameters())
before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
wall, cpu = time.perf_counter(), time.process_time()
result = ifv.prune(model, x, sparsity, method=method)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps(dict(wall=wall, cpu=cpu, rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      model_mb=before_mb, params=params, after=result.params_after, groups=len(result.groups),
                      skipped=len(result.skipped))))
"""


def run_case(code: Path, name: str, size: int, batch: int, method: str, sparsity: float, timeout: float,
             memory_gb: float) -> dict:
    """One case in a fresh process importing the package from ``code``."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    limit = int(memory_gb * 2 ** 30)

    def cap():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [sys.executable, "-c", _CHILD, name, str(size), str(batch), method, str(sparsity)]
    load = round(os.getloadavg()[0], 1)  # of the shared machine, when the case started
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(code),
                              preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return dict(outcome=f"not finished in {timeout:g} s", load=load)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return dict(outcome=f"failed: {last[:90]}" + (" (killed)" if proc.returncode < 0 else ""), load=load)
    return dict(json.loads(lines[-1]), outcome="ok", load=load)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT), help="name:input_size:batch")
    parser.add_argument("--methods", nargs="*", default=["default", "intra-fusion"])
    parser.add_argument("--sparsities", nargs="*", type=float, default=[0.0, 0.3])
    parser.add_argument("--before", type=Path, help="another checkout of the package (its repository root)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="wall-clock seconds per case")
    parser.add_argument("--memory-gb", type=float, default=20.0, help="address-space cap per case")
    parser.add_argument("--only", choices=["before", "after"], help="measure only these cases (the table shows both)")
    parser.add_argument("--force", action="store_true", help="re-measure cached cases")
    parser.add_argument("--report", action="store_true", help="print the table from the cache, measure nothing")
    args = parser.parse_args(argv)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    import torch

    torch.set_num_threads(1)  # as in every case (the header reports it)
    codes = ([("before", args.before.resolve() if args.before else None)]
             if args.before or args.only == "before" or args.report else []) + [("after", ROOT)]
    rows = []
    for spec in args.models:
        name, size, batch = spec.split(":")
        for method in args.methods:
            for sparsity in args.sparsities:
                cells = {}
                for label, code in codes:
                    key = cache_key(label, name, size, batch, method, sparsity)
                    if not args.report and (args.only in (None, label)) and (args.force or key not in cache):
                        if code is None:
                            parser.error("--before DIR is needed to measure the before cases")
                        rec = run_case(code, name, int(size), int(batch), method, sparsity, args.timeout,
                                       args.memory_gb)
                        print(f"{name} {method} {sparsity:g} {label}: {rec}", file=sys.stderr, flush=True)
                        cache[key] = rec
                        save_cache(CACHE, {key: rec})
                    cells[label] = cache.get(key, dict(outcome="not measured"))
                row = [f"{name} ({size}x{size}, batch {batch})", method, f"{sparsity:.0%}"]
                for label, _ in codes:
                    rec = cells[label]
                    if rec["outcome"] != "ok":
                        row += [rec["outcome"], "–"]
                    else:
                        row += [f"{rec['rss_mb'] / 1024:.2f}", f"{rec['wall']:.1f} ({rec['cpu']:.1f})"]
                row.append(" / ".join(f"{cells[label].get('load', float('nan')):g}" for label, _ in codes))
                ok = [cells[label] for label, _ in codes if cells[label]["outcome"] == "ok"]
                row.append(f"{ok[0]['model_mb'] / 1024:.2f}" if ok else "–")
                row.append(f"{ok[0]['params'] / 1e6:.1f}M -> {ok[0]['after'] / 1e6:.1f}M" if ok else "–")
                if len(ok) == 2:
                    same = ok[0]["after"] == ok[1]["after"]
                    row[-1] += "" if same else " (differ!)"
                rows.append(row)
    columns = ["model (input)", "method", "sparsity"]
    for label, _ in codes:
        columns += [f"{label}: peak RSS GB", f"{label}: wall s (CPU s)"]
    columns += ["load at start", "RSS before prune GB", "parameters"]
    print(header("python benchmarks/prune_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    print(markdown_table(columns, rows))


if __name__ == "__main__":
    main()
