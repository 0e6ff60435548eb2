"""Execute a notebook from a fresh kernel in fast mode; a failing cell raises with its source shown."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


class NotebookCellError(AssertionError):
    """A cell of a notebook raised; the message holds the notebook, cell number, source and error."""


def fast_env(extra=None) -> dict:
    """Environment of the kernel: fast mode, the repo importable even without ``pip install -e``."""
    env = dict(os.environ)
    env["IFV_FAST"] = "1"
    env.pop("IFV_FULL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra or {})
    return env


def run_notebook(path, timeout: int = 120, cwd=None, env=None):
    """Run every cell of the notebook at ``path`` in a new ``python3`` kernel.

    Parameters
    ----------
    path : path-like
        The ``.ipynb`` file.
    timeout : int
        Seconds allowed per cell.
    cwd : path-like, optional
        Working directory of the kernel (default: the notebook's folder).
    env : dict, optional
        Kernel environment (default: :func:`fast_env`).

    Returns
    -------
    nbformat.NotebookNode
        The executed notebook (with outputs).

    Raises
    ------
    NotebookCellError
        When a cell raises: the message names the cell and shows its source and the error.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    try:
        client.execute(env=env or fast_env())
    except (CellExecutionError, CellTimeoutError) as error:
        cell_index, source = _failing_cell(nb)
        raise NotebookCellError(
            f"{path.name}: cell {cell_index} failed\n"
            f"----- cell source -----\n{source}\n"
            f"----- error -----\n{error}") from None
    return nb


def _failing_cell(nb):
    """The last code cell that produced an error output (or the first never executed)."""
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    for i, cell in reversed(code_cells):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            return i, cell.source
    for i, cell in code_cells:
        if cell.get("execution_count") is None:
            return i, cell.source
    return -1, "<unknown cell>"
