"""Sphinx configuration of the tattn_numba documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

No network is needed: intersphinx is off, there are no notebooks, and the only third-party
extensions are numpydoc and myst-parser (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import os
import sys

# The package is normally installed (editable); this keeps a plain checkout building too.
sys.path.insert(0, os.path.abspath(".."))

import tattn_numba  # noqa: E402

# -- Project ---------------------------------------------------------------------------------
project = "tattn_numba"
author = "the tattn_numba developers"
copyright = "2026, the tattn_numba developers"
release = tattn_numba.__version__
version = ".".join(release.split(".")[:2])

# -- General ---------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

# Cross-references that cannot be resolved are not errors (nitpicky off), and nothing is
# fetched from the network (no intersphinx).
nitpicky = False

# -- autodoc / autosummary / numpydoc --------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_default_options = {"exclude-members": "__init__"}
autosummary_generate = False  # summary tables only; every object is documented on its page

numpydoc_show_class_members = False  # attributes come from the docstrings' Attributes sections
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()

# -- MyST (the measured-numbers pages are Markdown) -----------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# -- HTML -------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"tattn_numba {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Tensor (2-simplicial) attention: exact kernels and a certified surrogate",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "240px",
}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}


# -- Docstring convention: a bare "|" is an absolute-value bar ---------------------------------
# The package's docstrings write plain-text mathematics (|Õ − O|, |ΔdQ[i,l]|, ...). In
# reStructuredText "|text|" is a substitution reference, so each such bar pair would be an
# "Undefined substitution referenced" error. This hook, run after numpydoc, escapes bare bars
# outside inline literals, roles (:math:`|x|` keeps its bars), literal blocks, doctest blocks
# and math/code directives, so they render as the bars the author wrote. It removes no warning
# of any other kind. Set TATTN_DOCS_RAW_DOCSTRINGS=1 to build without it and see every
# docstring that relies on the convention.
import re  # noqa: E402

_PROTECTED_DIRECTIVE = re.compile(
    r"^\s*\.\.\s+(math|code|code-block|sourcecode|highlight|literalinclude|doctest|testcode|testoutput)::"
)
_SUBSTITUTION_DEFINITION = re.compile(r"^\s*\.\.\s+\|")
_INLINE = re.compile(
    r"``.+?``"  # inline literal
    r"|(?::[\w.+:-]+:)?`[^`]+`(?::[\w.+:-]+:)?_{0,2}"  # interpreted text / role / reference
    r"|\\."  # an existing escape
    r"|(?P<bar>\|)",
    re.S,
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _protect_indented_block(lines: list[str], protected: list[bool], start: int) -> int:
    """Mark the lines indented under ``lines[start]`` (blank lines included); return the next index."""
    base = _indent(lines[start])
    j = start + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
        protected[j] = True
        j += 1
    return j


def _protected_lines(lines: list[str]) -> list[bool]:
    """Lines inside literal blocks (after "::"), math/code directives and doctest blocks."""
    protected = [False] * len(lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _SUBSTITUTION_DEFINITION.match(line):
            protected[i] = True
        elif stripped.startswith(">>>"):
            while i < len(lines) and lines[i].strip():
                protected[i] = True
                i += 1
            continue
        directive = bool(_PROTECTED_DIRECTIVE.match(line))  # also ".. math:: x = |y|" on one line
        literal = stripped.endswith("::") and not stripped.startswith("..")  # a paragraph ending in "::"
        if directive or literal:
            protected[i] = protected[i] or directive
            i = _protect_indented_block(lines, protected, i)
            continue
        i += 1
    return protected


def _escape_bars(app, what, name, obj, options, lines):
    if os.environ.get("TATTN_DOCS_RAW_DOCSTRINGS") == "1":
        return
    protected = _protected_lines(lines)
    out: list[str] = []
    chunk: list[str] = []

    def flush():
        if chunk:
            text = _INLINE.sub(lambda m: "\\|" if m.group("bar") else m.group(0), "\n".join(chunk))
            out.extend(text.split("\n"))
            chunk.clear()

    for line, keep in zip(lines, protected):
        if keep:
            flush()
            out.append(line)
        else:
            chunk.append(line)
    flush()
    lines[:] = out


def setup(app):
    # numpydoc rewrites docstrings at the default priority (500); escape afterwards.
    app.connect("autodoc-process-docstring", _escape_bars, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
