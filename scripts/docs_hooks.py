"""MkDocs hooks for the docs site (mkdocs.yml: `hooks: [scripts/docs_hooks.py]`).

Four jobs, each small (and one rule for the Markdown: `_` is never emphasis, see `NoUnderscoreEmphasis`):

1. **Notebooks.** The executed notebooks live in `notebooks/`, outside `docs/`. Every `notebooks/NN_*.ipynb` is
   added to the site (mkdocs-jupyter renders it from its committed outputs, without running it) and listed, in
   order, under the nav's empty "Notebooks" section: a new notebook appears without editing mkdocs.yml.
2. **Links that leave docs/.** The README, the docs pages and the notebooks link to each other by repository
   paths (`docs/math.md`, `../notebooks/05_triton_kernel.ipynb`, `../docs/kernel.md`, `src/mla_tutorial/graphs.py`)
   so that they read well on a forge. Such links are pointed at the page that the site builds from the same file
   (a module's source goes to its API reference page); a link to a file the site does not hold becomes plain text.
3. **The overview page** (`docs/index.md`) takes the README's text at its `<!-- readme: lead -->` and
   `<!-- readme: sections -->` markers, so the README stays the one home of that text.
4. **Results tables.** The page `results/tables.md` is written at build time from every committed
   `docs/results/*.json`, and a marker `<!-- results: GLOB [table|summary] [figures[=SUFFIX]] -->` in any page expands
   into the table (and plots) of the newest file matching GLOB. Numbers come from the files, never typed in.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from markdown.extensions import Extension
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files
from mkdocs.utils import get_relative_url

log = logging.getLogger("mkdocs.hooks.docs_hooks")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
NOTEBOOKS = ROOT / "notebooks"
PACKAGE = ROOT / "src" / "mla_tutorial"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
TABLES_PAGE = "results/tables.md"
GENERATED = ROOT / ".cache" / "docs_hooks"  # pages written at build time (ignored by git)

_MD_LINK = re.compile(r"(!?\[[^\]\n]*\])\(([^)\s]+)\)")
_HTML_LINK = re.compile(r"""\b(href|src)="([^"]+)\"""")
_MARKER = re.compile(r"^<!--\s*(readme|results):\s*(.*?)\s*-->\s*$", re.MULTILINE)
_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


# ---------------------------------------------------------------------------------------------- 1. notebooks

def notebook_paths() -> list[Path]:
    """The course notebooks, in order: notebooks/01_*.ipynb, 02_*, ..."""
    return sorted(NOTEBOOKS.glob(NOTEBOOK_GLOB))


class NoUnderscoreEmphasis(Extension):
    """`_` never means emphasis here: the pages write the paper's subscripts in plain text (W^{UK}_i c^{KV}_j, d_c,
    k^R_j), which Markdown would otherwise read as _italic_ runs. `*` still emphasises; `**` still bolds."""

    def extendMarkdown(self, md: Any) -> None:  # noqa: N802 (Python-Markdown's name)
        if getattr(md, "delimiters", None) is not None:  # Python-Markdown >= 3.11: one delimiter processor
            md.delimiters.remove("_")
        elif "em_strong2" in md.inlinePatterns:  # earlier versions: the underscore pattern
            md.inlinePatterns.deregister("em_strong2")


@event_priority(100)  # before mkdocstrings reads the Markdown extensions for the docstrings
def on_config(config: Any) -> Any:
    config["markdown_extensions"].append(NoUnderscoreEmphasis())
    for item in config["nav"] or []:
        if isinstance(item, dict) and "Notebooks" in item:
            item["Notebooks"] = [f"notebooks/{p.name}" for p in notebook_paths()]
    config["watch"].extend([str(NOTEBOOKS), str(ROOT / "README.md"), str(PACKAGE)])
    return config


@event_priority(50)  # before mkdocs-jupyter's on_files, which turns every .ipynb File into a page
def on_files(files: Files, config: Any) -> Files:
    for path in notebook_paths():
        files.append(File(f"notebooks/{path.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    # Written to a file (not handed over as a string) so that every plugin sees a page with a source path.
    tables = GENERATED / TABLES_PAGE
    tables.parent.mkdir(parents=True, exist_ok=True)
    tables.write_text(tables_page())
    files.append(File.generated(config, TABLES_PAGE, abs_src_path=str(tables)))
    return files


# ---------------------------------------------------------------------------------------------- 2. links

def reference_pages() -> dict[str, str]:
    """Module name → its API reference page (`docs/reference/*.md` holding `::: mla_tutorial.x`)."""
    pages = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for module in re.findall(r"^:::\s*(mla_tutorial[\w.]*)", page.read_text(), re.MULTILINE):
            pages.setdefault(module, f"reference/{page.name}")
    return pages


def site_uri(target: Path, files: Files) -> str | None:
    """The site's source URI (relative to docs/) of the page or file built from repository path `target`."""
    target = Path(posixpath.normpath(target.as_posix()))
    if target.is_relative_to(DOCS):
        rel = target.relative_to(DOCS).as_posix()
        if target.is_dir():
            rel = next((f"{rel}/{name}" for name in ("index.md", "README.md") if (target / name).exists()), rel)
        return rel if files.get_file_from_path(rel) else None
    if target.parent == NOTEBOOKS and target.suffix == ".ipynb":
        rel = f"notebooks/{target.name}"
        return rel if files.get_file_from_path(rel) else None
    if target.is_relative_to(PACKAGE.parent) and target.suffix in (".py", ""):
        module = ".".join(target.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        pages = reference_pages()
        while module:  # the module's own page, else its package's (kernels/v5.py → the kernels page)
            if module in pages:
                return pages[module]
            module = module.rpartition(".")[0]
    return None


def _split_target(target: str) -> tuple[str, str] | None:
    """(path, '#anchor') of a relative link, None for an absolute URL, a mail link or a bare anchor."""
    if re.match(r"^[a-zA-Z][\w+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path, _, anchor = target.partition("#")
    return path, f"#{anchor}" if anchor else ""


def rewrite_markdown_links(markdown: str, source_dir: Path, page_uri: str, files: Files) -> str:
    """Point links that leave docs/ at pages of the site; outside code fences only."""
    page_dir = posixpath.dirname(page_uri)

    def fix(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        split = _split_target(target)
        if split is None:
            return match.group(0)
        path, anchor = split
        repo_path = (source_dir / path).resolve()
        if repo_path.is_relative_to(DOCS) and source_dir.is_relative_to(DOCS):
            return match.group(0)  # an ordinary link inside docs/: MkDocs resolves and checks it
        uri = site_uri(repo_path, files)
        if uri is None:
            log.info("docs_hooks: %s: no page for link %r; kept as text", page_uri, target)
            return text[1:-1] if not text.startswith("!") else match.group(0)
        return f"{text}({posixpath.relpath(uri, page_dir or '.')}{anchor})"

    parts = _FENCE.split(markdown)
    # _FENCE.split keeps the fence markers; rewrite only text outside fenced blocks
    out, inside = [], False
    for part in parts:
        if part in ("```", "~~~"):
            inside = not inside
            out.append(part)
        else:
            out.append(part if inside else _MD_LINK.sub(fix, part))
    return "".join(out)


_LIST_ITEM = re.compile(r"^\s{0,3}([-*+]|1[.)])\s")  # as in CommonMark: an ordered list interrupts a paragraph at 1.


def separate_lists(markdown: str) -> str:
    """A blank line before a list that follows a paragraph line: forges render such a list, Python-Markdown would
    read its items as text of the paragraph."""
    out: list[str] = []
    in_list = in_fence = False
    for line in markdown.split("\n"):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
        elif not in_fence:
            if not line.strip():
                in_list = False
            elif _LIST_ITEM.match(line):
                if not in_list and out and out[-1].strip() and not out[-1].lstrip().startswith(("|", "<", "#")):
                    out.append("")
                in_list = True
        out.append(line)
    return "\n".join(out)


def rewrite_html_links(html: str, source_dir: Path, page: Any, files: Files) -> str:
    """The same for a rendered notebook: hrefs are relative to the notebook's folder in the repository."""
    def fix(match: re.Match) -> str:
        attr, target = match.group(1), match.group(2)
        split = _split_target(target)
        if split is None or split[0] == "":
            return match.group(0)
        path, anchor = split
        uri = site_uri((source_dir / path).resolve(), files)
        file = files.get_file_from_path(uri) if uri else None
        if file is None:
            return match.group(0)
        return f'{attr}="{get_relative_url(file.url, page.url)}{anchor}"'

    return _HTML_LINK.sub(fix, html)


# ---------------------------------------------------------------------------------------------- 3. overview

def readme_parts() -> dict[str, str]:
    """The README split at its title and its first '## ' heading: 'lead' (after the title) and 'sections'."""
    text = (ROOT / "README.md").read_text()
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    cut = re.search(r"^## ", body, re.MULTILINE)
    lead, sections = (body[:cut.start()], body[cut.start():]) if cut else (body, "")
    return {"lead": lead.strip() + "\n", "sections": sections}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    source = Path(page.file.abs_src_path) if page.file.abs_src_path else DOCS / page.file.src_uri
    page_uri = page.file.src_uri

    def expand(match: re.Match) -> str:
        kind, arg = match.group(1), match.group(2)
        if kind == "readme":
            parts = readme_parts()
            if arg not in parts:
                raise ValueError(f"{page_uri}: unknown README part {arg!r}; expected one of {sorted(parts)}")
            return rewrite_markdown_links(parts[arg], ROOT, page_uri, files)
        return results_marker(arg, page_uri)

    markdown = separate_lists(_MARKER.sub(expand, markdown))
    if source.is_relative_to(DOCS):
        markdown = rewrite_markdown_links(markdown, source.parent, page_uri, files)
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    uri = page.file.src_uri
    if uri.startswith("notebooks/") and uri.endswith(".ipynb"):
        name = posixpath.basename(uri)
        source = (f'<p class="notebook-source">The notebook <a href="{name}" download><code>{uri}</code></a> as '
                  "committed, with the outputs of its last run (the site does not re-run it; <code>make test</code> "
                  f"does). Run it yourself: <code>jupyter lab {uri}</code>.</p>\n")
        html = rewrite_html_links(html, NOTEBOOKS, page, files)
        title_end = html.find("</h1>")  # under the notebook's title, else at the top
        cut = title_end + len("</h1>") if title_end >= 0 else 0
        html = html[:cut] + "\n" + source + html[cut:]
    return html


# ---------------------------------------------------------------------------------------------- 4. results

def _num(x: float | None, digits: int = 3) -> str:
    """A latency or a ratio: 3 decimals below 10, then fewer (67.05 → '67.0', 3.0853 → '3.085')."""
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.{digits}f}"


def _text(value: Any) -> str:
    """Free text from a result file, safe in Markdown: its * and _ are characters, not emphasis."""
    return re.sub(r"([*_\\[\]<>|])", r"\\\1", str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _env(data: dict) -> dict:
    return data.get("environment") or data.get("device_info") or (data.get("env") or {}).get("info") or \
        (data.get("device") if isinstance(data.get("device"), dict) else {}) or {}


def _ceilings(data: dict) -> str:
    roof = data.get("roofline") or {}
    env = data.get("env") or {}
    gbps = roof.get("copy_gbps") or (roof.get("copy") or {}).get("gbps") or env.get("copy_gbps")
    tflops = roof.get("matmul_tflops") or (roof.get("matmul") or {}).get("tflops") or env.get("matmul_tflops")
    if not gbps:
        return ""
    text = f"ceilings measured in the same run: copy {gbps:,.0f} GB/s"
    return text + (f", bf16 matmul {tflops:,.0f} TFLOP/s" if tflops else "")


def _caption(name: str, data: dict, what: str) -> str:
    env = _env(data)
    facts = [f"[`{name}`]({name})", what]
    if env.get("card"):
        facts.append(env["card"])
    date = env.get("date_utc") or (data.get("meta") or {}).get("date")
    if date:
        facts.append(str(date)[:10])
    if env.get("torch"):
        facts.append(f"torch {env['torch']}, Triton {env.get('triton', '?')}")
    if _ceilings(data):
        facts.append(_ceilings(data))
    code = (data.get("provenance") or {}).get("code")
    if code:
        facts.append(f"code: {code}")
    return "From " + "; ".join(facts) + ".\n"


def _tour_cells(data: dict) -> tuple[list[tuple[int, int]], dict[tuple[int, int], dict], list[dict]]:
    """(heads, context) columns in order, {(stage, heads): {context: decode record or skip reason}}, stages."""
    columns = [(h, c) for h in sorted({s["heads"] for s in data["stages"]}, reverse=True) for c in data["contexts"]]
    cells: dict = {}
    for st in data["stages"]:
        row = cells.setdefault((st["stage"], st["heads"]), {})
        row.update({d["context"]: d for d in st["decode"]})
        for skip in st.get("skipped", []):
            row.update({c: skip["reason"].split(" (budget")[0] for c in skip.get("contexts", [])})
    stages = sorted({s["stage"]: s for s in data["stages"]}.values(), key=lambda s: s["stage"])
    return columns, cells, stages


def _tour_summary(data: dict) -> str:
    """One row per stage: bytes cached and the step time at every (heads, context) of the run."""
    columns, cells, stages = _tour_cells(data)
    header = ["stage", "B/token/layer (heads/GPU: bytes)"] + [f"{h} heads, S = {c:,}: ms" for h, c in columns]
    rows = []
    for st in stages:
        sizes = sorted({(s["heads"], s["cache"]["analytic_bytes_per_token"]) for s in data["stages"]
                        if s["stage"] == st["stage"]}, reverse=True)
        size = f"{sizes[0][1]:,}" if len({b for _, b in sizes}) == 1 else ", ".join(f"{h}: {b:,}" for h, b in sizes)
        row = [f"{st['stage']} {st['name']}" + (" (graph)" if st.get("graph") else ""), size]
        for h, c in columns:
            cell = cells.get((st["stage"], h), {}).get(c)
            row.append(_num(cell["latency_ms"]) if isinstance(cell, dict) else (cell or "–"))
        rows.append(row)
    passed = all(s["check"].get("passed") for s in data["stages"])
    intro = (f"{data['preset']}, {data['dtype']}, batch {data['batch']}: one attention layer's decode step, median of "
             f"{data['reps']} steps; (graph): replays of a CUDA graph, the others eager. Every stage "
             f"{'passed' if passed else '**did not pass**'} its check against the previous one.\n\n")
    return intro + _table(header, rows)


def _tour_table(data: dict) -> str:
    """The summary, then per stage and shape: ×floor, tokens/s and $ per million tokens for the whole model."""
    columns, cells, stages = _tour_cells(data)
    header = ["stage", "heads/GPU", "S", "ms", "×floor", "tokens/s", f"$/M tokens, ×{data.get('layers', '?')} layers"]
    rows = []
    for h, c in columns:
        for st in stages:
            cell = cells.get((st["stage"], h), {}).get(c)
            if isinstance(cell, dict):
                rows.append([f"{st['stage']} {st['name']}", h, f"{c:,}", _num(cell["latency_ms"]),
                             f"×{cell['times_floor']:.1f}", f"{cell['tokens_per_s']:,.0f}",
                             f"{cell['usd_per_million_tokens_model']:.2f}"])
            elif cell:
                rows.append([f"{st['stage']} {st['name']}", h, f"{c:,}", cell, "", "", ""])
    detail = ("\n×floor: the step's time over the least time its bytes and FLOPs allow at the measured ceilings; "
              "$/M tokens: at the GPU-hour price the file assumes, attention only.\n\n")
    return _tour_summary(data) + detail + _table(header, rows)


def _stage_bench_table(data: dict) -> str:
    header = ["heads", "batch", "context", "stage", "graph", "ms (median)", "×floor", "tokens/s", "host ms"]
    recs = sorted(data["records"], key=lambda r: (-r["heads"], r["batch"], r["context"], r["stage"], not r["graph"]))
    rows = [[r["heads"], r["batch"], f"{r['context']:,}", f"{r['stage']} {r['name']}", "on" if r["graph"] else "off",
             _num(r["latency_ms"]), f"×{r['times_floor']:.1f}" if r.get("times_floor") else "–",
             f"{r['tokens_per_s']:,.0f}", _num(r.get("host_ms"))] for r in recs]
    intro = (f"{data['preset']}, {data['dtype']}, one attention layer, median of {data['reps']} steps per shape; "
             f"host ms: host time of one call (eager only).\n\n")
    skipped = "".join(f"- not run: {s}\n" for s in data.get("skipped") or [])
    return intro + _table(header, rows) + ("\n" + skipped if skipped else "")


_IMPL_LABELS = {"flashmla": "FlashMLA", "flash_mla_with_kvcache": "v4 (this repo's API)", "v3_split_kv": "v3",
                "v2_head_tiled": "v2", "v1_naive": "v1", "torch_paged": "torch (stage 3)"}


def _kernel_table(data: dict) -> str:
    impls: list[str] = []
    for row in data["rows"]:
        impls += [name for name in row["impl"] if name not in impls]
    header = ["b", "h_q", "s_q", "s_k", "lengths"] + [f"{_IMPL_LABELS.get(i, i)} ms" for i in impls]
    if any("flashmla_over_ours" in r for r in data["rows"]):
        header.append("FlashMLA / v5")
    rows = []
    for r in data["rows"]:
        cells = [r["b"], r["h_q"], r["s_q"], f"{r['s_k']:,}", r["lengths"]]
        cells += [_num((r["impl"].get(i) or {}).get("ms")) for i in impls]
        if "FlashMLA / v5" in header:
            cells.append(_num((r.get("flashmla_over_ours") or {}).get("v5"), 2))
        rows.append(cells)
    intro = ("Whole call per shape (`triton.testing.do_bench` median, L2 flushed); bf16, page 64; "
             "– where a version was not run at that shape.\n\n")
    return intro + _table(header, rows)


def _fp8_bench_table(data: dict) -> str:
    impls: list[str] = []
    for t in data["timing"]:
        impls += [name for name in t["ms"] if name not in impls]
    labels = {"fp8": "FP8 cache (stage 5)", "bf16_v5": "bf16, v5", "flashmla": "FlashMLA (bf16)"}
    header = ["b", "h_q", "s_q", "s_k", "lengths"] + [f"{labels.get(i, i)} ms" for i in impls] + ["FP8 / bf16 bytes"]
    rows = [[t["b"], t["h_q"], t["s_q"], f"{t['s_k']:,}", t["lengths"]] + [_num(t["ms"].get(i)) for i in impls]
            + [f"{t['bytes']['fp8'] / t['bytes']['bf16']:.2f}"] for t in data["timing"]]
    ok = all(c.get("ok") for c in (data.get("correctness") or {}).values())
    intro = (f"Whole call per shape, median; correctness against the reference on the dequantized cache: "
             f"{'passed at every shape' if ok else '**failed somewhere**: see the file'}.\n\n")
    return intro + _table(header, rows)


def _capacity_table(data: dict) -> str:
    header = ["stage", "cache", "B/token/layer", "B/token, all layers", "sequences per GPU group", "longest context"]
    rows = [[f"{s['stage']} {s['name']}", s["cache"], f"{s['bytes_per_token_per_layer']:,}",
             f"{s['bytes_per_token']:,}", s["max_sequences"], f"{s['longest_context']:,}"] for s in data["stages"]]
    intro = (f"Arithmetic, no measurement: {data['preset']}, {data['gpu_memory_bytes'] / 1e9:,.0f} GB per GPU, "
             f"tensor parallelism {data['tp']} ({data['heads_per_gpu']} heads per GPU), context "
             f"{data['context']:,} tokens. Assumptions: ")
    intro += "; ".join(map(_text, data.get("assumptions", []))) + ".\n\n"
    return intro + _table(header, rows)


def _sm_parts_table(data: dict) -> str:
    keys = [k for k in data["rows"][0] if k.endswith("_ms")]
    header = ["h_q", "s_q", "s_k", "lengths"] + [k.removesuffix("_ms") + " ms" for k in keys]
    rows = [[r["h_q"], r["s_q"], f"{r['s_k']:,}", r["lengths"]] + [_num(r.get(k)) for k in keys]
            for r in data["rows"]]
    return _text(data.get("what", "")) + "\n\n" + _table(header, rows)


def _occupancy_table(records: list[dict]) -> str:
    header = ["kernel", "launched for", "warps", "registers", "spills", "shared KiB", "programs/SM (limit)",
              "tensor cores"]
    rows = []
    for r in records:
        launched = r.get("launched_for") or {}
        rows.append([f"`{r['kernel']}`", ", ".join(f"{k} {v}" for k, v in launched.items() if k != "tile") or "–",
                     r["num_warps"], r["registers_per_thread"], r["spills"], f"{r['shared_bytes'] / 1024:.1f}",
                     f"{r['programs_per_sm']} ({r['limited_by']})", (r.get("tensor_cores") or {}).get("kind", "–")])
    return _table(header, rows)


# (what the file is, how to tell it, how to tabulate it), in the order the page lists them
_KINDS: list[tuple[str, Any, Any]] = [
    ("the ladder at serving shapes (`mla-tutorial tour --device cuda`)", lambda d: isinstance(d, dict) and "tour" in d,
     _tour_table),
    ("one decode step per stage and shape (`mla-tutorial bench`)",
     lambda d: isinstance(d, dict) and d.get("benchmark") == "mla_tutorial stage decode", _stage_bench_table),
    ("the kernel benchmark (`mla-tutorial bench --kernel`)",
     lambda d: isinstance(d, dict) and isinstance(d.get("rows"), list) and "impl" in d["rows"][0], _kernel_table),
    ("the FP8 cache beside bf16 (`scripts/gpu_fp8_bench.py`)",
     lambda d: isinstance(d, dict) and isinstance(d.get("timing"), list) and "correctness" in d, _fp8_bench_table),
    ("sequences per GPU (`mla-tutorial memory`)", lambda d: isinstance(d, dict) and "gpu_memory_bytes" in d,
     _capacity_table),
    ("v4's schedule size (`scripts/sm_parts_sweep.py`)", lambda d: isinstance(d, dict) and "factors" in d,
     _sm_parts_table),
    ("occupancy of each compiled kernel (`python -m mla_tutorial.measure.occupancy`)",
     lambda d: isinstance(d, list) and d and "registers_per_thread" in d[0], _occupancy_table),
]


_SUMMARIES = {_tour_table: _tour_summary}


def _kind(data: Any) -> tuple[str, Any] | None:
    for what, test, table in _KINDS:
        if test(data):
            return what, table
    return None


def _date_key(path: Path) -> tuple[str, str]:
    found = re.search(r"\d{4}-\d{2}-\d{2}", path.name)
    return (found.group(0) if found else "", path.name)


def figures_of(json_path: Path, suffix: str = "") -> list[Path]:
    """The plots written with a result file: same stem, optionally followed by `_something`, ending in .png."""
    return sorted(p for p in RESULTS.glob(f"{json_path.stem}*.png")
                  if p.stem == json_path.stem or p.stem.startswith(json_path.stem + "_")
                  if p.stem.endswith(suffix))


def result_section(path: Path, page_dir: str, table: bool | str = True, figures: str | None = "") -> str:
    """Caption, table (or "summary": the short one, where a kind has one) and plots of one result file, with links
    relative to a page in `page_dir`."""
    data = json.loads(path.read_text())
    kind = _kind(data)
    rel = posixpath.relpath(path.relative_to(DOCS).as_posix(), page_dir or ".")
    what = kind[0] if kind else "see the file"
    out = _caption(rel, data if isinstance(data, dict) else {}, what)
    if table and kind:
        out += "\n" + (_SUMMARIES.get(kind[1], kind[1]) if table == "summary" else kind[1])(data)
    if figures is not None:
        for fig in figures_of(path, figures):
            src = posixpath.relpath(fig.relative_to(DOCS).as_posix(), page_dir or ".")
            out += f"\n![{fig.name}: plotted from {path.name}]({src})\n"
    return out


def results_marker(arg: str, page_uri: str) -> str:
    """`GLOB [table|summary] [figures[=SUFFIX]]`: the newest docs/results file matching GLOB (date in its name)."""
    glob, *opts = arg.split()
    matches = sorted(RESULTS.glob(glob), key=_date_key)
    if not matches:
        raise ValueError(f"{page_uri}: <!-- results: {arg} --> matches no file in docs/results/")
    fig_opts = [o for o in opts if o == "figures" or o.startswith("figures=")]
    figures = fig_opts[0].partition("=")[2] if fig_opts else ("" if not opts else None)
    table = "summary" if "summary" in opts else (not opts or "table" in opts)
    return result_section(matches[-1], posixpath.dirname(page_uri), table=table, figures=figures)


def tables_page() -> str:
    """The page results/tables.md: every committed result file, grouped by kind, newest first."""
    out = ["# Every result file, tabulated\n",
           "Written when the site is built, from the JSON files committed in `docs/results/` "
           "([measured results](README.md) reads them and says how each is produced). Compare numbers within one "
           "file only: each carries its own card, software versions and ceilings.\n"]
    files = sorted(RESULTS.glob("*.json"), key=_date_key, reverse=True)
    loaded = {p: json.loads(p.read_text()) for p in files}
    listed: set[Path] = set()
    for what, test, _ in _KINDS:
        group = [p for p in files if test(loaded[p])]
        if not group:
            continue
        out.append(f"## {what[0].upper()}{what[1:]}\n")
        for p in group:
            out.append(f"### {p.name}\n")
            out.append(result_section(p, "results"))
            listed.add(p)
    others = [p for p in files if p not in listed]
    if others:
        out.append("## Other files\n")
        out.append("Read in the pages that cite them ([FP8](../fp8.md), [kernel](../kernel.md), "
                   "[v5 notes](v5_notes.md)):\n")
        out += [f"- [`{p.name}`]({p.name})" for p in others]
        out.append("")
    logs = sorted(RESULTS.glob("*.log"))
    if logs:
        out.append("## GPU test logs\n")
        out += [f"- [`{p.name}`]({p.name})" for p in logs]
        out.append("")
    return "\n".join(out)
