"""Verdicts: each figure's claim from the paper, what this run measured, and reproduced / partly / not.

A notebook calls :func:`verdict` once per figure; it shows a box in the page and stores the verdict as JSON
(``$CHAOSNB_VERDICTS``, set by the book driver) so that the front page can tabulate every figure.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

STATUSES = ("reproduced", "partly", "not reproduced", "not testable at this profile")
VERDICTS_ENV = "CHAOSNB_VERDICTS"
# verdicts are shown as text in a coloured box (book/_static/chaosnb.css): readable with any font, no emoji needed
_BADGE_TEXT = {"reproduced": "reproduced", "partly": "partly reproduced", "not reproduced": "not reproduced",
               "not testable at this profile": "not testable at this profile"}


def badge(status: str) -> str:
    """Inline HTML for a verdict status: its words in a box coloured by the CSS class ``verdict-<status>``."""
    if status not in STATUSES:
        raise ValueError(f"unknown verdict status {status!r}; valid: {', '.join(STATUSES)}")
    return f'<span class="verdict-badge verdict-{status.replace(" ", "-")}">{_BADGE_TEXT[status]}</span>'


def verdict_anchor(figure: str) -> str:
    """HTML id of a figure's verdict box (``Figure B.1.3`` -> ``verdict-figure-b-1-3``), linked from the front page."""
    return "verdict-" + _slug(figure).replace("_", "-")


@dataclass(frozen=True)
class Verdict:
    """One figure's verdict: the paper's claim, what was measured, the status and why, at a profile, on a page."""

    figure: str
    claim: str
    measured: str
    status: str
    reason: str
    profile: str
    page: str
    seeds: int = 1

    def markdown(self) -> str:
        """The verdict box of a page: an anchor, the badge, the paper's claim, the measurement and the criterion."""
        return (f'<span id="{verdict_anchor(self.figure)}"></span>**Verdict for {self.figure} at profile '
                f"`{self.profile}`:** {badge(self.status)}\n\n"
                f"- *Paper:* {self.claim}\n- *Measured here:* {self.measured}\n- *Why:* {self.reason}")


def verdict_dir() -> Path | None:
    """The folder the verdicts are stored in (``$CHAOSNB_VERDICTS``), or None when it is not set."""
    env = os.environ.get(VERDICTS_ENV)
    return Path(env) if env else None


def _slug(figure: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in figure).strip("_").lower()


def verdict(figure: str, claim: str, measured: str, status: str, reason: str, profile: str, page: str,
            display: bool = True, seeds: int = 1) -> Verdict:
    """Record and display the verdict for one figure (status: reproduced | partly | not reproduced); ``seeds``:
    how many independent training seeds it rests on."""
    if status not in STATUSES:
        raise ValueError(f"unknown verdict status {status!r}; valid: {', '.join(STATUSES)}")
    v = Verdict(figure, claim, measured, status, reason, profile, page, int(seeds))
    folder = verdict_dir()
    if folder is not None:
        from chaosnb.runs import atomic_write_json

        atomic_write_json(folder / f"{_slug(figure)}.json", asdict(v))
    if display:
        from IPython.display import Markdown
        from IPython.display import display as show

        show(Markdown(v.markdown()))
    return v


def record(judgement, profile: str, page: str, display: bool = True) -> Verdict:
    """Record and display a :class:`chaosnb.verdicts.Judgement` (the criterion computed by the package)."""
    return verdict(judgement.figure, judgement.claim, judgement.measured, judgement.status, judgement.reason,
                   profile, page, display, getattr(judgement, "seeds", 1))


def load_verdicts(folder: Path | None = None) -> list[Verdict]:
    """All stored verdicts, in figure order (main text first, then the appendix)."""
    folder = folder or verdict_dir()
    if folder is None or not folder.exists():
        return []
    items = [Verdict(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
    return sorted(items, key=lambda v: (not v.figure.startswith("Figure"), _natural(v.figure)))


def _natural(text: str) -> list:
    import re

    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def verdict_table(verdicts: list[Verdict]) -> str:
    """HTML table: figure, claim, verdict, seeds, profile, link to the verdict box on the page that shows it."""
    from html import escape

    head = ("<tr><th>figure</th><th>claim of the paper</th><th>verdict</th><th>seeds</th><th>profile</th>"
            "<th>page</th></tr>")
    rows = [f"<tr><td>{escape(v.figure)}</td><td>{escape(v.claim)}</td><td>{badge(v.status)}</td>"
            f"<td>{v.seeds}</td><td><code>{escape(v.profile)}</code></td>"
            f"<td><a href=\"{escape(v.page)}.html#{verdict_anchor(v.figure)}\">{escape(v.page)}</a></td></tr>"
            for v in verdicts]
    return f"<table class=\"table\">{head}{''.join(rows)}</table>"


def verdict_counts(verdicts: list[Verdict]) -> dict[str, int]:
    """How many figures have each status."""
    return {status: sum(v.status == status for v in verdicts) for status in STATUSES}


def sig3(x):
    """A number rounded to 3 significant digits (for printed / glued values); None and non-finite unchanged."""
    return float(f"{x:.3g}") if x is not None and math.isfinite(x) else x


def markdown_table(header, rows) -> str:
    """A small markdown table from a header and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def show_table(header, rows) -> None:
    """Display :func:`markdown_table` in a notebook."""
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(header, rows)))


class GluedText:
    """Text glued into a page as itself: a plain ``str`` would be shown with its repr quotes ('0.616')."""

    def __init__(self, text: str) -> None:
        """Keep ``text`` to be shown as it is."""
        self.text = text

    def __repr__(self) -> str:
        """The text itself, without quotes."""
        return self.text


def glue(name: str, value, display: bool = False) -> None:
    """``myst_nb.glue`` for the book's pages, with strings glued without quotes (see :class:`GluedText`)."""
    from myst_nb import glue as myst_glue

    myst_glue(name, GluedText(value) if isinstance(value, str) else value, display=display)
