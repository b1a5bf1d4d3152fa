"""Build the book: execute every notebook of ``_toc.yml`` with papermill, then ``jupyter-book build``.

Notebook sources are MyST markdown notebooks under ``book/`` (one ``parameters``-tagged cell whose
defaults are the quick profile). The driver converts them to ``.ipynb`` in a staging copy of the book,
executes them with papermill (``profile`` and any ``-p key value`` overrides injected), in parallel
processes that share finished runs through the results store, and builds the HTML with execution off,
so the book shows exactly the executed outputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class NotebookFailed(RuntimeError):
    """A notebook raised while executing; the message names the notebook and the cell."""


@dataclass
class NotebookResult:
    """One executed notebook: its name, the wall time and the error (None when it ran through)."""

    name: str
    seconds: float
    error: str | None = None


def toc_entries(root: Path = PROJECT_ROOT) -> list[str]:
    """Every file named in ``_toc.yml`` (root first), without extension, relative to the book root."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(items):
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections"))
            for part in item.get("parts", []) or []:
                walk(part.get("chapters"))
            walk(item.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []) or []:
        walk(part.get("chapters"))
    return entries


def is_notebook(path: Path) -> bool:
    """A MyST markdown file is a notebook when its front matter declares a kernelspec."""
    if path.suffix == ".ipynb":
        return True
    text = path.read_text()
    return text.startswith("---") and "kernelspec" in text.split("---", 2)[1]


def source_file(root: Path, entry: str) -> Path:
    """The source of a ``_toc.yml`` entry: ``<entry>.md`` or ``<entry>.ipynb``."""
    for suffix in (".md", ".ipynb"):
        if (root / f"{entry}{suffix}").exists():
            return root / f"{entry}{suffix}"
    raise FileNotFoundError(f"_toc.yml names {entry!r} but neither {entry}.md nor {entry}.ipynb exists")


def stage(root: Path, staging: Path, keep: set[str] | None = None) -> list[Path]:
    """Copy the book into ``staging``; notebooks become unexecuted ``.ipynb``. Returns the notebooks.

    Staged notebooks named in ``keep`` (stems) that already exist are left as they are, so a partial rebuild
    (``--only``) keeps the executed outputs of the other pages.
    """
    import jupytext

    keep = keep or set()
    if staging.exists() and not keep:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, staging / name)
    notebooks = []
    for entry in toc_entries(root):
        src = source_file(root, entry)
        dst = staging / src.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if is_notebook(src) and src.stem in keep and dst.with_suffix(".ipynb").exists():
            notebooks.append(dst.with_suffix(".ipynb"))
        elif is_notebook(src):
            nb = jupytext.read(src)
            nb.metadata.pop("jupytext", None)
            target = dst.with_suffix(".ipynb")
            jupytext.write(nb, target, fmt="ipynb")
            notebooks.append(target)
        else:
            shutil.copy2(src, dst)
    for extra in ("book/_static", "book/references.bib"):
        if (root / extra).exists() and not (staging / extra).exists():
            copy = shutil.copytree if (root / extra).is_dir() else shutil.copy2
            copy(root / extra, staging / extra)
    return notebooks


def quiet_kernel_manager_class():
    """jupyter_client's AsyncKernelManager, changed in two ways that keep the build log clean at the source.

    * Transport ``ipc`` (Unix sockets in the Jupyter runtime folder) instead of unencrypted TCP on localhost,
      which ipykernel >= 7 warns about in every kernel ("Kernel is running over TCP without encryption").
    * No SIGINT to a kernel that is being shut down: jupyter_client interrupts before its shutdown request, and
      a kernel caught between messages logs "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel". The
      notebook has finished when papermill shuts the kernel down, so the shutdown request alone suffices.
    """
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class QuietKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            folder = Path(jupyter_runtime_dir())
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"chaosnb-kernel-{os.getpid()}-{id(self)}")

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return QuietKernelManager


def execute_notebook(path: str, parameters: dict, cwd: str) -> NotebookResult:
    """Execute one staged notebook in place with papermill; errors are returned, not raised."""
    import papermill

    start = time.time()
    name = Path(path).stem
    try:
        papermill.execute_notebook(path, path, parameters=parameters, cwd=cwd, kernel_name="python3",
                                   progress_bar=False, log_output=False,
                                   kernel_manager_class=quiet_kernel_manager_class())
    except papermill.PapermillExecutionError as err:
        return NotebookResult(name, time.time() - start,
                              f"cell {err.exec_count} ({err.cell_index}): {err.ename}: {err.evalue}")
    except Exception as err:  # noqa: BLE001 - report every failure with the notebook's name
        return NotebookResult(name, time.time() - start, f"{type(err).__name__}: {err}")
    hide_plumbing(Path(path))
    return NotebookResult(name, time.time() - start)


PLUMBING_TAGS = ("parameters", "injected-parameters")


def hide_plumbing(path: Path) -> int:
    """Tag the ``parameters`` and papermill's injected-parameters cells ``remove-cell``.

    The cells stay in the notebook (papermill and nbval need them) but are not shown in the HTML. Returns how many
    cells were tagged now.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    tagged = 0
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if any(tag in tags for tag in PLUMBING_TAGS) and "remove-cell" not in tags:
            tags.append("remove-cell")
            tagged += 1
    if tagged:
        nbformat.write(nb, path)
    return tagged


def absolute_path_variables(names: tuple[str, ...] = ("CHAOSNB_DATA", "CHAOSNB_RESULTS")) -> None:
    """Make relative data/results roots absolute: notebooks execute in the build tree, not the caller's cwd."""
    for name in names:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str(Path(value).expanduser().resolve())


def precompute(profile: str, overrides: dict | None, jobs: int, scheduler: str | None = None) -> None:
    """Compute every run of the experiment catalogue at this profile (cached), on a Dask cluster: the one at
    ``scheduler`` (default ``$CHAOSNB_SCHEDULER``), else a local one of ``jobs`` processes (``jobs=1``: in
    this process; see :func:`chaosnb.runs.sweep`). Failed runs are listed with their hash and message; the
    others go on."""
    from chaosnb.cluster import describe, scheduler_address
    from chaosnb.experiments import all_configs, load_profile
    from chaosnb.runs import is_done, sweep

    address = scheduler_address(scheduler)
    configs = [c for c in all_configs(load_profile(profile, overrides)) if not is_done(c)]
    jobs = max(1, min(jobs, len(configs)))
    where = "this process" if address is None and jobs == 1 else describe(address, jobs)
    print(f"precomputing {len(configs)} run(s) on {where}", flush=True)
    start = time.time()
    if configs:
        rows = sweep(configs, jobs=jobs, progress=False, runs_bar=True, scheduler=address)
        for run_hash, status, _ in rows:
            if status.startswith("error"):
                print(f"  run {run_hash} failed: {status}", flush=True)
    print(f"  runs ready in {time.time() - start:.1f} s", flush=True)


def build(profile: str = "quick", build_dir: str | os.PathLike | None = None, only: list[str] | None = None,
          parameters: dict | None = None, jobs: int | None = None, html: bool = True, precompute_runs: bool = True,
          root: Path = PROJECT_ROOT, scheduler: str | None = None) -> Path:
    """Execute the book's notebooks at ``profile`` and build the HTML; returns the HTML folder.

    Order: every run of the catalogue is computed first (``jobs`` processes, one torch thread each), then
    the notebooks execute in parallel (reading runs from the store), the front page last (it tabulates
    the verdicts the others stored), then ``jupyter-book build`` renders the executed notebooks.
    """
    from chaosnb.experiments import profile_names

    if profile not in profile_names():
        raise ValueError(f"unknown profile {profile!r}; valid profiles are: {', '.join(profile_names())}")
    build_dir = Path(build_dir) if build_dir else root / "_build" / profile
    staging = build_dir / "src"
    stems = [Path(entry).stem for entry in toc_entries(root)]
    # a partial rebuild re-stages the pages asked for and the front page, and keeps the others' outputs
    keep = set(stems) - set(only) - {stems[0]} if only else None
    notebooks = stage(root, staging, keep)
    if only:
        unknown = set(only) - {p.stem for p in notebooks}
        if unknown:
            raise ValueError(f"unknown notebook(s) {sorted(unknown)}; notebooks are: "
                             f"{', '.join(sorted(p.stem for p in notebooks))}")
    parameters = dict(parameters or {})
    params = {"profile": profile, **parameters}
    jobs = jobs or os.cpu_count() or 1
    verdicts = build_dir / "verdicts"
    if not only and verdicts.exists():
        shutil.rmtree(verdicts)
    os.environ.update({"CHAOSNB_VERDICTS": str(verdicts), "CHAOSNB_PROGRESS": "0"})
    absolute_path_variables()
    total = time.time()
    if precompute_runs:
        precompute(profile, parameters.get("overrides"), jobs, scheduler)
    if jobs > 1:  # one BLAS thread per notebook kernel when several run at once
        os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    front = staging / f"{toc_entries(root)[0]}.ipynb"
    todo = [p for p in notebooks if (not only or p.stem in only) and p != front]
    print(f"executing {len(todo)} notebook(s) at profile {profile!r} with {jobs} process(es)", flush=True)
    started = time.time()
    failures = []
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
        futures = [pool.submit(execute_notebook, str(p), params, str(p.parent)) for p in todo]
        results = [fut.result() for fut in futures]
    if front in notebooks:
        results.append(execute_notebook(str(front), params, str(front.parent)))
    for res in results:
        status = "FAILED " + res.error if res.error else "ok"
        print(f"  {res.name:<32} {res.seconds:7.1f} s  {status}", flush=True)
        if res.error:
            failures.append(f"{res.name}: {res.error}")
    if failures:
        raise NotebookFailed("notebook(s) failed:\n  " + "\n  ".join(failures))
    print(f"all notebooks executed in {time.time() - started:.1f} s", flush=True)
    if not html:
        return staging
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(staging), "--path-output", str(build_dir),
           "--warningiserror", "--keep-going"]
    print("building HTML:", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise NotebookFailed(f"jupyter-book build failed (exit {proc.returncode})")
    out = build_dir / "_build" / "html"
    print(f"book built in {time.time() - total:.1f} s in total: {out / 'index.html'}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sphinx extension (``_config.yml`` lists ``chaosnb.book``): docstrings as the API page shows them

_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")


def escape_bars(line: str) -> str:
    """Escape ``|`` outside inline literals.

    Docstrings write absolute values and norms as ``|x|``, which reStructuredText would otherwise read as a
    substitution reference (an error in the build).
    """
    return "".join(part if _LITERAL.fullmatch(part) else part.replace("|", "\\|") for part in _LITERAL.split(line))


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    lines[:] = [escape_bars(line) for line in lines]


def unique_scripts(scripts: list) -> list:
    """Scripts of a page without repeats (same file and same inline body), first occurrence kept."""
    seen, kept = set(), []
    for script in scripts:
        key = (getattr(script, "filename", str(script)) or "", getattr(script, "attributes", {}).get("body"))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"] = unique_scripts(context["script_files"])


def _resolve_short_name(app, env, node, contnode):
    """Resolve a bare ``Name`` left unresolved in a docstring to the one ``chaosnb`` object of that name.

    Example: ``:class:`Spectrum``` written in a module that only imports it. Nothing is returned (the reference
    stays unresolved and the browser check reports it) unless exactly one documented object has that name.
    """
    from sphinx.util.nodes import make_refnode

    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "").lstrip("~.")
    name = target.rsplit(".", 1)[-1]
    objects = env.get_domain("py").objects
    matches = [full for full in objects if full.startswith("chaosnb.") and full.rsplit(".", 1)[-1] == name]
    if len(matches) != 1:
        return None
    entry = objects[matches[0]]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, matches[0])


def setup(app) -> dict:
    """Sphinx entry point (``_config.yml`` lists ``chaosnb.book`` as an extension).

    Escapes ``|`` in docstrings (:func:`escape_bars`) before autodoc renders them, resolves bare class names in
    docstrings (``_resolve_short_name``), and drops repeated scripts from each page (sphinx-thebe's inline
    ``const THEBE_JS_URL`` is registered twice under Jupyter Book, and the second copy is a JavaScript error in
    every reader's console).
    """
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("missing-reference", _resolve_short_name)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# ---------------------------------------------------------------------------------------------------------------
# The book as a reader gets it: every page opened in headless Chromium from the local files, network blocked

CHROMIUM = "/usr/bin/chromium"
# pages of the HTML output that are not pages of the book (Sphinx's search page needs no check of its own)
_SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_sphinx_design_static"}

# Runs in the page after load: images, math, links and unresolved cross-references as the reader's browser has them.
_PAGE_PROBE = r"""
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  for (const img of document.images) { img.loading = "eager"; }
  await Promise.all([...document.images].map(img => img.complete ? null :
      new Promise(done => { img.onload = img.onerror = done; setTimeout(done, 5000); })));
  const visible = el => !el.closest("script, style, pre, code, textarea, .highlight, mjx-container, mjx-assistive-mml");
  const images = [...document.images].map(img => ({src: img.getAttribute("src") || "",
      loaded: img.complete && img.naturalWidth > 0}));
  const math = [...document.querySelectorAll(".math")].map(el => ({
      rendered: !!el.querySelector("mjx-container") && !el.querySelector("mjx-merror"),
      text: el.textContent.trim().slice(0, 80)}));
  const raw = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const pattern = /\\\(|\\\)|\\\[|\\\]|\$[^$\s][^$]*\$/;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.parentElement && visible(node.parentElement) && pattern.test(node.nodeValue)) {
      raw.push(node.nodeValue.trim().slice(0, 80));
    }
  }
  const links = [...document.querySelectorAll("a[href]")].map(a => ({href: a.href, raw: a.getAttribute("href"),
      text: a.textContent.trim().slice(0, 60)}));
  const unresolved = [...document.querySelectorAll(".xref")].filter(el => !el.closest("a"))
      .map(el => el.textContent.trim().slice(0, 80));
  const unlinked_rows = [...document.querySelectorAll("tr")].filter(tr => tr.querySelector(".verdict-badge")
      && !tr.querySelector("a[href]")).map(tr => tr.textContent.trim().slice(0, 80));
  // every figure a notebook cell drew must be followed by its "computed by" line before the next figure
  const marks = [...document.querySelectorAll(".cell_output img, .computed-by")];
  const uncredited = marks.filter((el, i) => el.tagName === "IMG" && !(marks[i + 1] &&
      marks[i + 1].classList.contains("computed-by"))).map(img => img.getAttribute("src") || "");
  const credits_without_api_link = [...document.querySelectorAll(".computed-by")]
      .filter(el => !el.querySelector('a[href*="api.html#"]')).map(el => el.textContent.trim().slice(0, 80));
  const ids = [...document.querySelectorAll("[id]")].map(el => el.id)
      .concat([...document.querySelectorAll("a[name]")].map(el => el.getAttribute("name")));
  return {images, math, raw, links, unresolved, unlinked_rows, uncredited, credits_without_api_link, ids};
}
"""


_REFRESH = re.compile(r"""<meta\s+http-equiv=["']refresh["']\s+content=["']\d+;\s*url=([^"']+)["']""", re.I)


@dataclass(frozen=True)
class Defect:
    """A defect a reader would see on a page; ``kind``: load, console, image, math, link, figure or request."""

    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        """``page: kind: detail``, one line per defect in the check's report."""
        return f"{self.page}: {self.kind}: {self.detail}"


def html_pages(html_dir: Path) -> list[Path]:
    """Every HTML page of a built book (Sphinx's support folders excluded), sorted."""
    html_dir = Path(html_dir)
    return sorted(p for p in html_dir.rglob("*.html") if not _SKIP_DIRS & set(p.relative_to(html_dir).parts[:-1]))


def _ids_of(path: Path, cache: dict) -> set[str]:
    """Element ids (and ``<a name>``) of an HTML file, parsed once."""
    if path not in cache:
        from html.parser import HTMLParser

        found: set[str] = set()

        class Ids(HTMLParser):
            def handle_starttag(self, tag, attrs):
                attrs = dict(attrs)
                if attrs.get("id"):
                    found.add(attrs["id"])
                if tag == "a" and attrs.get("name"):
                    found.add(attrs["name"])

        Ids().feed(path.read_text(errors="replace"))
        cache[path] = found
    return cache[path]


def check_link(href: str, page: Path, page_ids: set[str], cache: dict) -> str | None:
    """Why an internal link of ``page`` (absolute ``file:`` URL as the browser resolved it) is dead, or None.

    External links (http, https, mailto) are not followed: reading the book sends no request for them.
    """
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(href)
    if parts.scheme in ("http", "https", "mailto", "javascript", "data"):
        return None
    if parts.scheme != "file":
        return f"unexpected link scheme {parts.scheme!r}"
    target = Path(unquote(parts.path))
    if target == page and parts.fragment:
        ids = page_ids
    elif not target.exists():
        return f"no file {target}"
    elif target.is_dir():
        return None if (target / "index.html").exists() else f"folder without index.html: {target}"
    elif parts.fragment and target.suffix == ".html":
        ids = _ids_of(target, cache)
    else:
        return None
    fragment = unquote(parts.fragment)
    if fragment and fragment not in ids:
        return f"no element with id {fragment!r} in {target.name}"
    return None


def check_pages(html_dir: str | os.PathLike, pages: list[Path] | None = None,
                screenshots: str | os.PathLike | None = None, chromium: str = CHROMIUM) -> list[Defect]:
    r"""Open each page in headless Chromium from ``file://`` with every other request blocked; list the defects.

    A page is clean when it loads, logs no JavaScript error, every ``<img>`` has loaded (natural width > 0), every
    math element holds rendered MathJax and no raw ``$...$``, ``\(...\)`` or ``\[...\]`` is left in its text,
    every internal link (file and ``#fragment``) resolves, no cross-reference is left unresolved, every row of a
    verdict table (a row with a ``verdict-badge``) links to its figure, every figure drawn by a notebook cell is
    followed by its ``computed-by`` line and each such line links to the API page, and the page
    made no request beyond ``file:``, ``data:`` and ``blob:`` URLs. With ``screenshots`` a full-page PNG of each
    page is saved there (same relative path, ``.png``).
    """
    from playwright.sync_api import sync_playwright

    html_dir = Path(html_dir).resolve()
    pages = [Path(p).resolve() for p in (pages if pages is not None else html_pages(html_dir))]
    if not pages:
        raise FileNotFoundError(f"no HTML pages under {html_dir}: build the book first (make book-smoke)")
    if not Path(chromium).exists():
        raise FileNotFoundError(f"Chromium not found at {chromium}: install Debian's chromium package "
                                "(`apt-get install chromium`, which `make test` does when it is missing)")
    defects: list[Defect] = []
    cache: dict = {}
    with sync_playwright() as pw:
        # DNS is mapped to nowhere as a second wall behind the request filter below
        browser = pw.chromium.launch(executable_path=chromium, args=["--host-resolver-rules=MAP * ~NOTFOUND"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        outside: list[str] = []

        def route(req):
            if req.request.url.split(":", 1)[0] in ("file", "data", "blob", "about"):
                req.continue_()
            else:
                outside.append(req.request.url)
                req.abort()

        context.route("**/*", route)
        for path in pages:
            name = path.relative_to(html_dir).as_posix() if path.is_relative_to(html_dir) else str(path)
            redirect = _REFRESH.search(path.read_text(errors="replace"))
            if redirect:  # Jupyter Book's root index.html only forwards to the first page: check where it points
                why = check_link((path.parent / redirect.group(1)).resolve().as_uri(), path, set(), cache)
                if why:
                    defects.append(Defect(name, "link", f"redirect to {redirect.group(1)}: {why}"))
                continue
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda msg, errors=errors: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
            outside.clear()
            try:
                page.goto(path.as_uri(), wait_until="load", timeout=60_000)
                probe = page.evaluate(_PAGE_PROBE)
            except Exception as err:  # noqa: BLE001 - a page that does not load is a defect of that page
                defects.append(Defect(name, "load", f"{type(err).__name__}: {err}"))
                page.close()
                continue
            defects += [Defect(name, "console", text) for text in errors]
            defects += [Defect(name, "image", f"not loaded: {img['src']}") for img in probe["images"]
                        if not img["loaded"]]
            defects += [Defect(name, "math", f"not rendered: {m['text']}") for m in probe["math"] if not m["rendered"]]
            defects += [Defect(name, "math", f"raw math in text: {text}") for text in probe["raw"]]
            defects += [Defect(name, "link", f"unresolved cross-reference: {text}") for text in probe["unresolved"]]
            defects += [Defect(name, "link", f"verdict row without a link to its figure: {text}")
                        for text in probe["unlinked_rows"]]
            defects += [Defect(name, "figure", f"no 'computed by' line under the figure {src}")
                        for src in probe["uncredited"]]
            defects += [Defect(name, "figure", f"'computed by' line without a link to the API page: {text}")
                        for text in probe["credits_without_api_link"]]
            ids = set(probe["ids"])
            for link in probe["links"]:
                why = check_link(link["href"], path, ids, cache)
                if why:
                    defects.append(Defect(name, "link", f"{link['raw']} ({link['text']!r}): {why}"))
            defects += [Defect(name, "request", f"blocked request to {url}") for url in dict.fromkeys(outside)]
            if screenshots is not None:
                shot = Path(screenshots) / Path(name).with_suffix(".png")
                shot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
            page.close()
        browser.close()
    return defects


def main(argv: list[str] | None = None) -> int:
    """``python -m chaosnb.book check HTML_DIR [--screenshots DIR]``: the browser check of a built book."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m chaosnb.book", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="open every page in headless Chromium, network blocked; list defects")
    check.add_argument("html_dir", type=Path)
    check.add_argument("--screenshots", type=Path, default=None, help="save a full-page PNG of each page here")
    check.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args(argv)
    pages = html_pages(args.html_dir)
    start = time.time()
    defects = check_pages(args.html_dir, pages, args.screenshots, args.chromium)
    bad = sorted({d.page for d in defects})
    for defect in defects:
        print(defect)
    print(f"browser check: {len(pages)} pages in {time.time() - start:.1f} s, network blocked; "
          f"{len(defects)} defect(s)" + (f" on {len(bad)} page(s)" if bad else "")
          + (f"; screenshots in {args.screenshots}" if args.screenshots else ""))
    print(f"{len(pages) - len(bad)} passed, {len(bad)} failed")
    return 1 if defects else 0


if __name__ == "__main__":
    raise SystemExit(main())
