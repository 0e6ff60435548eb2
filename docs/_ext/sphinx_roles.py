"""A griffe extension for the API pages: Sphinx roles in our docstrings read as code.

The docstrings are numpy-style and cross-reference with Sphinx roles (``:class:`PruneResult```,
``:func:`ifv.prune```), which Markdown would show literally. This rewrites them to inline code
(``PruneResult``) before mkdocstrings renders the page.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const|ref|doc):`~?([^`]+)`")


def strip_roles(text: str) -> str:
    """``:class:`X``` -> ```X```, ``:meth:`~a.b.c``` -> ```a.b.c```."""
    return ROLE.sub(lambda m: f"`{m.group(1)}`", text)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:  # noqa: D102 (griffe's hook)
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
