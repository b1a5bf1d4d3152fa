"""The book driver's staging: MyST notebooks become .ipynb; a partial rebuild keeps the other pages' outputs."""

import json

from chaosnb.book import stage, toc_entries

NOTEBOOK = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# {title}

```{{code-cell}} ipython3
:tags: [parameters]
profile = "quick"
```
"""


def _book(root):
    (root / "book").mkdir(parents=True)
    (root / "_config.yml").write_text("title: t\n")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/index\nchapters:\n- file: book/a\n- file: book/notes\n")
    for name in ("index", "a"):
        (root / "book" / f"{name}.md").write_text(NOTEBOOK.format(title=name))
    (root / "book" / "notes.md").write_text("# plain page\n")
    return root


def test_stage_converts_notebooks_and_copies_pages(tmp_path):
    root = _book(tmp_path / "src")
    assert toc_entries(root) == ["book/index", "book/a", "book/notes"]
    notebooks = stage(root, tmp_path / "staged")
    assert sorted(p.name for p in notebooks) == ["a.ipynb", "index.ipynb"]
    cells = json.loads((tmp_path / "staged/book/a.ipynb").read_text())["cells"]
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    assert (tmp_path / "staged/book/notes.md").read_text() == "# plain page\n"


def test_partial_restage_keeps_executed_pages(tmp_path):
    root = _book(tmp_path / "src")
    staged = tmp_path / "staged"
    stage(root, staged)
    executed = staged / "book/a.ipynb"
    executed.write_text(executed.read_text().replace('"cells"', '"executed": true, "cells"', 1))
    stage(root, staged, keep={"a"})
    assert '"executed": true' in executed.read_text()
    stage(root, staged)  # a full build starts from scratch
    assert '"executed": true' not in executed.read_text()


def test_glued_strings_have_no_quotes():
    from IPython.core.formatters import PlainTextFormatter

    from chaosnb.report import GluedText

    assert PlainTextFormatter()(GluedText("0.616")) == "0.616"
    assert PlainTextFormatter()("0.616") == "'0.616'"  # why GluedText exists


def test_report_helpers_for_pages():
    import math

    from chaosnb.report import markdown_table, sig3

    assert sig3(0.123456) == 0.123 and sig3(None) is None and math.isnan(sig3(math.nan))
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
