#!/usr/bin/env bash
# Installs what tests/test_browser.py needs: Debian's chromium, Playwright (driver only) and JupyterLab.
# No `playwright install`: it downloads its own browser, which CI cannot; the test launches /usr/bin/chromium.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if ! command -v chromium >/dev/null; then
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
python -m pip install --quiet playwright "jupyterlab>=4" "ipywidgets>=8" "anywidget>=0.9"
chromium --version
python -c "import playwright, jupyterlab; print('playwright + jupyterlab', jupyterlab.__version__)"
