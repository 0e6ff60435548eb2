"""Browser-visible latency of the explore dashboard's sparsity slider: JupyterLab in headless Chromium
(Playwright), a key press on the slider to the updated figures in the page.

Runs the browser tests that measure it and prints their latency blocks: the digits CNN (notebook 03,
18 moves at 1366x768 with the file browser open) and VGG11-BN at CIFAR shapes with a 512-image batch
(18 moves on the last conv, paper group G0; ``--vgg-groups G0,G3`` for more).  Each move goes to a
setting not computed before (0.50 -> 0.05 with importance l1, back with l2).  Targets (median, 2-core
CPU): <= 150 ms digits CNN, <= 400 ms VGG11-BN.  Needs /usr/bin/chromium, playwright, jupyterlab
(see .ci/install_browser.sh).

    python benchmarks/bench_dashboard_browser.py            # both, ~3 min on a quiet machine
    python benchmarks/bench_dashboard_browser.py --only cnn
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(test: str, env: dict) -> int:
    command = [sys.executable, "-m", "pytest", "-s", "-q", "-m", "browser", "-p", "no:cacheprovider",
               "tests/test_browser.py", "-k", test]
    out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    shown = False
    for line in lines:
        if line.startswith("slider latency"):
            shown = True
        elif shown and not line.startswith("  "):
            shown = False
        if shown:
            print(line, flush=True)
    if out.returncode:
        print("\n".join(lines[-40:]) + out.stderr[-3000:], file=sys.stderr)
    return out.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["cnn", "vgg"], default=None)
    parser.add_argument("--vgg-groups", default="G0", help="paper groups of VGG11-BN, e.g. G0,G3")
    parser.add_argument("--moves", type=int, default=9, help="VGG moves per direction (2 directions)")
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min) at the start: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    code = 0
    if args.only != "vgg":
        code |= run("explore", env)
    if args.only != "cnn":
        code |= run("vgg", dict(env, IFV_BROWSER_VGG="1", IFV_LATENCY_GROUPS=args.vgg_groups,
                                IFV_LATENCY_MOVES=str(args.moves)))
    return code


if __name__ == "__main__":
    sys.exit(main())
