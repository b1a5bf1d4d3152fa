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


def test_verdict_badges_are_text_and_anchored():
    from chaosnb.report import Verdict, badge, verdict_anchor, verdict_table

    assert badge("partly") == '<span class="verdict-badge verdict-partly">partly reproduced</span>'
    assert all(ord(ch) < 128 for status in ("reproduced", "partly", "not reproduced") for ch in badge(status))
    assert verdict_anchor("Figure B.1.3") == "verdict-figure-b-1-3"
    assert verdict_anchor("Theorem A.10") != verdict_anchor("Theorem A.1")
    v = Verdict("Figure 1", "claim", "measured", "not reproduced", "why", "smoke", "main_figures")
    assert v.markdown().startswith('<span id="verdict-figure-1"></span>**Verdict for Figure 1')
    assert '<a href="main_figures.html#verdict-figure-1">' in verdict_table([v])
    assert "verdict-not-reproduced" in verdict_table([v])
    three = Verdict("Figure 2", "claim", "measured", "partly", "why", "smoke", "main_figures", seeds=3)
    assert "<th>seeds</th>" in verdict_table([v, three]) and "<td>3</td>" in verdict_table([three])
    import pytest

    with pytest.raises(ValueError, match="unknown verdict status"):
        badge("maybe")


def test_figure_data_reads_back_every_plotted_number(tmp_path):
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chaosnb.plots import FIGURE_DATA_COLUMNS, figure_data, write_figure_data

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1, 2], [1.0, 0.5, 0.25], label="loss")
    a.plot([0, 1], [3.0, 4.0])  # unlabelled
    a.set_title("left")
    b.scatter([1.5, 2.5], [7.0, 8.0], label="points")
    b.bar([0, 1], [2.0, 5.0], width=0.5, label="bars")
    hidden = fig.add_subplot(2, 2, 4)
    hidden.plot([9], [9])
    hidden.set_visible(False)
    rows = figure_data(fig)
    assert (0, "left", "", "", "loss", "line", 2.0, 0.25) in rows
    assert (0, "left", "", "", "unlabelled line 1", "line", 1.0, 4.0) in rows
    assert (1, "", "", "", "points", "scatter", 2.5, 8.0) in rows
    assert (1, "", "", "", "bars", "bar", 1.0, 5.0) in rows
    assert len(rows) == 3 + 2 + 2 + 2  # the hidden panel is left out
    path = tmp_path / "sub" / "fig.csv"
    assert write_figure_data(fig, path) == len(rows)
    with path.open() as handle:
        table = list(csv.reader(handle))
    plt.close(fig)
    assert tuple(table[0]) == FIGURE_DATA_COLUMNS and len(table) == len(rows) + 1
    assert [float(x) for x in table[1][6:]] == [0.0, 1.0]


def test_computed_by_line_links_functions_verdicts_and_data():
    import pytest

    from chaosnb.plots import api_role, computed_by_line

    assert api_role("chaosnb.cgd.CGD") == "{py:class}`~chaosnb.cgd.CGD`"
    assert api_role("chaosnb.analysis.tail_mean") == "{py:func}`~chaosnb.analysis.tail_mean`"
    assert api_role("chaosnb.lyapunov") == "{py:mod}`chaosnb.lyapunov`"
    from chaosnb.lyapunov import TangentMap

    assert api_role(TangentMap.matrix) == "{py:meth}`~chaosnb.lyapunov.TangentMap.matrix`"
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        api_role("chaosnb.cgd.nope")
    with pytest.raises(ValueError, match="dotted path"):
        api_role("numpy.mean")
    with pytest.raises(ValueError, match="chaosnb functions"):
        api_role(len)
    line = computed_by_line("Figure C.4.1 (a)", ["chaosnb.analysis.tail_mean"], "figdata/x.csv", ["Figure C.4.1"])
    assert line.startswith(":::{container} computed-by\n") and line.endswith("\n:::")
    assert '<a href="#verdict-figure-c-4-1">verdict for Figure C.4.1</a>' in line
    assert "{download}`plotted numbers (CSV) <figdata/x.csv>`" in line
    assert "verdict for" not in computed_by_line("Dataset samples", ["chaosnb.data.load_dataset"], None, [])
    with pytest.raises(ValueError, match="at least one"):
        computed_by_line("Figure 1", [], None)


def test_sphinx_helpers_escape_bars_and_drop_repeated_scripts():
    from sphinx.builders.html._assets import _JavaScript

    from chaosnb.book import escape_bars, unique_scripts

    assert escape_bars("log|1 - lr lambda| and ``|x|`` and :math:`|y|`") == \
        "log\\|1 - lr lambda\\| and ``|x|`` and :math:`|y|`"
    body = "const THEBE_JS_URL = 1"
    scripts = [_JavaScript(None, body=body), _JavaScript("a.js"), _JavaScript("", body=body), _JavaScript("a.js"),
               _JavaScript("", body="other")]
    kept = unique_scripts(scripts)
    assert kept == [scripts[0], scripts[1], scripts[4]]


def test_plumbing_cells_are_hidden(tmp_path):
    import nbformat

    from chaosnb.book import hide_plumbing

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("p = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("p = 2", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(p)", metadata={"tags": ["hide-input"]})]
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    assert hide_plumbing(path) == 2 and hide_plumbing(path) == 0
    tags = [c.metadata["tags"] for c in nbformat.read(path, as_version=4).cells]
    assert tags == [["parameters", "remove-cell"], ["injected-parameters", "remove-cell"], ["hide-input"]]


def test_kernel_manager_uses_ipc_and_skips_the_shutdown_interrupt():
    import asyncio

    from chaosnb.book import quiet_kernel_manager_class

    km = quiet_kernel_manager_class()(kernel_name="python3")
    assert km.transport == "ipc" and "chaosnb-kernel-" in km.ip
    calls = []

    async def base_interrupt(self):
        calls.append("interrupt")

    cls = type(km)
    original = cls.__mro__[1]._async_interrupt_kernel
    cls.__mro__[1]._async_interrupt_kernel = base_interrupt
    try:
        km.shutting_down = True
        asyncio.run(km._async_interrupt_kernel())
        assert calls == []
        km.shutting_down = False
        asyncio.run(km._async_interrupt_kernel())
        assert calls == ["interrupt"]
    finally:
        cls.__mro__[1]._async_interrupt_kernel = original
