"""MkDocs hook for the API reference: the docstrings name objects with Sphinx roles
(:func:`train`, :class:`~wakesleep.kernels.KernelRidge`), which Markdown renders as the role's
name followed by code.  Show the code alone, and for a ``~`` name only its last part, as Sphinx would."""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _code(m: re.Match) -> str:
    name = m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)
    return f"<code>{name}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_code, html)
