"""griffe extension for the API pages: datvit's docstrings are prose with reST touches, rendered as Markdown
(``docstring_style: null`` in mkdocs.yml). Three reST habits would render badly, so each docstring is rewritten
before rendering:

* Sphinx roles (:func:`name`, :class:`name`, ...) become plain code spans;
* doctest lines (``>>> ...``) become a fenced Python block instead of nested block quotes;
* a paragraph ending in ``::`` (a reST literal block follows) ends in ``:``; the indented block after it is a
  Markdown code block already.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const|ref):`")
_LITERAL = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            out.extend(["", "```python", *block, "```", ""])
            block.clear()

    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(">>>") or (block and stripped.startswith("...")):
            block.append(stripped[4:] if len(stripped) > 3 else "")
        else:
            flush()
            out.append(line)
    flush()
    return "\n".join(out)


def rewrite(text: str) -> str:
    text = _ROLE.sub("`", text)
    text = _LITERAL.sub(":", text)
    if ">>>" in text:
        text = _fence_doctests(text)
    return text


class ReSTDocstrings(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
