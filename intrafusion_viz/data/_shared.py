"""Where the project's side data lives: ``$INTRAFUSION_VIZ_SHARED``, else ``<project root>/../shared``.

A source checkout may sit next to a ``shared/`` folder holding data sets (``data/mnist``,
``data/fashion-mnist``) and recorded outputs of other code (``golden/``).  Nothing requires it: every
function that reads it also accepts an explicit folder or ``download=True``, and the tests that need it
skip with a reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["SHARED_ENV", "shared_dir", "shared_path"]

#: Environment variable naming the shared folder explicitly.
SHARED_ENV = "INTRAFUSION_VIZ_SHARED"


def shared_dir() -> Optional[Path]:
    """The shared folder: ``$INTRAFUSION_VIZ_SHARED`` if set, else ``<project root>/../shared`` if it exists.

    The project root is the folder holding the ``intrafusion_viz`` package (a source checkout).
    Returns ``None`` when neither exists.
    """
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env).expanduser()
    candidate = Path(__file__).resolve().parents[2].parent / "shared"
    return candidate if candidate.is_dir() else None


def shared_path(*parts: str) -> Optional[Path]:
    """``shared_dir() / parts`` when the shared folder and that path exist, else ``None``."""
    root = shared_dir()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None
