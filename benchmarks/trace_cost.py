"""Tracing cost of find_groups on the models whose tracing used to take minutes and > 14 GB (Swin, MaxViT).

Each model is traced in a fresh process (so the peak RSS is that model's, torch included), with one torch
thread, an address-space cap and a wall-clock limit.  Prints a Markdown table: outcome (groups found, or
the error's type and its first words), wall and CPU seconds, peak RSS.

    nice -n 10 python benchmarks/trace_cost.py
    nice -n 10 python benchmarks/trace_cost.py --models swin_t:32 resnet18:32 --timeout 900
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import header, markdown_table  # noqa: E402

DEFAULT = ("swin_t:32", "swin_v2_t:32", "maxvit_t:224", "shufflenet_v2_x0_5:32", "convnext_tiny:32", "resnet18:32")

_CHILD = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import torch, torchvision, intrafusion_viz as ifv
torch.set_num_threads(1)
name, size = sys.argv[1], int(sys.argv[2])
model = torchvision.models.get_model(name, weights=None).eval()
x = torch.randn(1, 3, size, size)
wall, cpu = time.perf_counter(), time.process_time()
try:
    outcome = f"{len(ifv.find_groups(model, x))} groups"
except Exception as err:
    outcome = f"{type(err).__name__}: {str(err)[:90]}..."
print(json.dumps(dict(outcome=outcome, wall=time.perf_counter() - wall, cpu=time.process_time() - cpu,
                      rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT), help="name:input_size")
    parser.add_argument("--timeout", type=float, default=600.0, help="wall-clock seconds per model")
    parser.add_argument("--memory-gb", type=float, default=16.0)
    args = parser.parse_args(argv)
    rows = []
    for spec in args.models:
        name, size = spec.split(":")
        limit = int(args.memory_gb * 2 ** 30)
        cmd = [sys.executable, "-c", _CHILD, name, size]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  preexec_fn=lambda: __import__("resource").setrlimit(
                                      __import__("resource").RLIMIT_AS, (limit, limit)))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            rec = json.loads(lines[-1]) if lines else dict(outcome=f"died: {proc.stderr[-120:]!r}")
        except subprocess.TimeoutExpired:
            rec = dict(outcome=f"not finished in {args.timeout:g} s (killed)")
        rows.append([f"{name} ({size}x{size})", rec["outcome"].replace("|", "/"),
                     f"{rec.get('wall', float('nan')):.1f}", f"{rec.get('cpu', float('nan')):.1f}",
                     f"{rec.get('rss_mb', float('nan')):.0f}"])
        print(rows[-1], file=sys.stderr, flush=True)
    print(header("python benchmarks/trace_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    print(markdown_table(["model (input)", "find_groups", "wall s", "CPU s", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
