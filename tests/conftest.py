"""Markers used by the notebook and browser tests (also listed in pyproject.toml once registered there)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: executes the notebooks from a fresh kernel in fast mode")
    config.addinivalue_line("markers", "browser: drives JupyterLab in headless Chromium (needs chromium, playwright, jupyterlab)")
