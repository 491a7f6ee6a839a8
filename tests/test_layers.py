"""The layering docs/ARCHITECTURE.md states, checked on the real import graph.

Every ``.py`` of ``tagllm_core/``, ``ui/``, ``pages/`` and ``app.py`` is parsed with ``ast`` (nothing is
imported). An import is *eager* when it runs on import of its module (module body, class bodies, ``if`` and
``try`` at module level), *lazy* when it sits inside a function, and *for types only* under ``if
TYPE_CHECKING:``. The rules:

* ``tagllm_core`` imports no ``streamlit``, ``ui`` or ``pages``, at any level; ``ui`` imports no ``pages``;
  a page imports no other page.
* No import cycle among ``tagllm_core`` modules through eager imports. Lazy imports may point back up
  (``tag_schema`` checks a card with ``tags`` and ``model``; ``reference`` predicts through
  ``prediction``); imports for types only never run.
* No import cycle among ``ui`` modules through eager imports either.
* The picture under ``## Layers`` in docs/ARCHITECTURE.md: every engine module sits in exactly one band,
  eager imports never go to a band above, every arrow is a real import of its kind (``─►`` eager,
  ``┄►`` lazy only), and every ``ui`` module appears above the engine's box.
* Every module of ``tagllm_core`` and ``ui`` has its paragraph in docs/ARCHITECTURE.md, and imports no
  project module that the paragraph does not list: eager imports under *May import:*, lazy ones under
  *May import:* or *Lazily:*. So a new module or a new dependency fails here until the document says it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ARCHITECTURE.md"
PACKAGES = ("tagllm_core", "ui", "pages")


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted ("tagllm_core.tags", "app")
    target: str  # imported module, dotted; project modules resolved to the file ("tagllm_core.stack")
    kind: str  # "eager", "lazy" or "types"
    line: int


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts)


def project_files() -> list[Path]:
    files = [REPO / "app.py"]
    for package in PACKAGES:
        files += sorted((REPO / package).glob("*.py"))
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(source: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules ``node`` imports; ``from pkg import name`` is ``pkg.name`` where that is a module file."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = source.split(".")[: -node.level]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{module}.{alias.name}"
        is_file = (REPO / Path(*sub.split("."))).with_suffix(".py").is_file()
        out.append(sub if is_file else module)
    return list(dict.fromkeys(out))  # `from .x import a, b` is one import of x


def imports_of(path: Path) -> list[Import]:
    source = module_name(path)
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend(Import(source, target, kind, node.lineno) for target in _resolve(source, node))
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            kind = "lazy" if kind == "eager" else kind
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, "types")
            for child in node.orelse:
                visit(child, kind)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, kind)

    visit(ast.parse(path.read_text(), filename=str(path)), "eager")
    return found


GRAPH = [imp for path in project_files() for imp in imports_of(path)]


def _top(name: str) -> str:
    return name.split(".")[0]


def _project(imp: Import) -> bool:
    return _top(imp.target) in PACKAGES


def engine_modules() -> list[str]:
    return [module_name(p) for p in sorted((REPO / "tagllm_core").glob("*.py"))]


def ui_modules() -> list[str]:
    return [module_name(p) for p in sorted((REPO / "ui").glob("*.py"))]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` as a closed path ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def walk(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = walk(nxt, path)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = walk(start, [])
            if cycle:
                return cycle
    return None


# --- the document's paragraphs --------------------------------------------------------------

_PARAGRAPH = re.compile(r"^\*\*`([\w.]+)`\*\*(.*?)(?=\n\s*\n|\Z)", re.S | re.M)
_CODE = re.compile(r"`([\w.]+)`")


@dataclass(frozen=True)
class Paragraph:
    module: str  # dotted, as imports_of names it
    eager: frozenset[str]
    lazy: frozenset[str]


def _doc_name(name: str) -> str:
    """``ui.cards`` stays as written; a bare name is an engine module (``stack`` → ``tagllm_core.stack``)."""
    return name if name.startswith(("ui.", "tagllm_core")) else f"tagllm_core.{name}"


def doc_paragraphs(text: str) -> dict[str, Paragraph]:
    """The module paragraphs of ``text``: ``**`name`** … *May import:* `a`, `b`. *Lazily:* `c`.``"""
    out = {}
    for name, body in _PARAGRAPH.findall(text):
        _, _, allowed = " ".join(body.split()).partition("*May import:*")  # a line may break anywhere
        eager_text, _, lazy_text = allowed.partition("*Lazily:*")
        module = _doc_name(name)
        out[module] = Paragraph(
            module,
            frozenset(_doc_name(n) for n in _CODE.findall(eager_text)),
            frozenset(_doc_name(n) for n in _CODE.findall(lazy_text)),
        )
    return out


PARAGRAPHS = doc_paragraphs(DOC.read_text())

# --- the document's picture -----------------------------------------------------------------

_ARROW = re.compile(r"(\w+) (─►|┄►) (?=(\w+))")


@dataclass(frozen=True)
class Picture:
    bands: list[tuple[str, set[str]]]  # engine bands from the top: (label, short module names in it)
    arrows: list[tuple[str, str, str]]  # (source, target, "eager" | "lazy"), dotted module names
    outside: str  # the picture's lines outside the engine's box (app, pages, ui)


def read_picture(text: str) -> Picture:
    """The first ``text`` code block under ``## Layers``: lines starting ``│`` are the engine's box, a band
    starting where column 2 holds its label; other lines are the app's. An arrow ``a ─► b`` is an import that
    runs on load, ``a ┄► b`` a lazy one; in the box names are engine modules, outside it ``ui`` modules."""
    section = text.split("## Layers", 1)[1]
    block = re.search(r"^```text\n(.*?)^```", section, re.S | re.M)
    assert block, "no ```text picture under ## Layers"
    engine = {m.split(".", 1)[1] for m in engine_modules()}
    bands: list[tuple[str, set[str]]] = []
    arrows, outside = [], []
    for line in block.group(1).splitlines():
        in_box = line.startswith("│")
        if in_box:
            if line[2:3].strip():
                bands.append((line[2:].split()[0], set()))
            bands[-1][1].update(w for w in re.findall(r"\w+", line) if w in engine)
        else:
            outside.append(line)
        package = "tagllm_core" if in_box else "ui"
        arrows += [(f"{package}.{a}", f"{package}.{b}", "eager" if arrow == "─►" else "lazy")
                   for a, arrow, b in _ARROW.findall(line)]
    return Picture(bands, arrows, "\n".join(outside))


PICTURE = read_picture(DOC.read_text())


# --- the rules ------------------------------------------------------------------------------


def test_the_graph_is_read_and_sees_every_kind_of_import():
    eager = {(i.source, i.target) for i in GRAPH if i.kind == "eager"}
    assert ("tagllm_core.model", "tagllm_core.stack") in eager
    assert ("tagllm_core.jobs", "tagllm_core.paths") in eager  # `from . import paths`
    assert ("ui.cards", "ui.charts") in eager
    assert ("pages.train", "ui.train_form") in eager  # `from ui import …`
    assert any(i.kind == "lazy" and i.source == "tagllm_core.cli" for i in GRAPH)
    assert any(i.kind == "types" and i.source == "tagllm_core.stack" for i in GRAPH)


def test_the_engine_imports_no_streamlit_ui_or_pages():
    bad = [i for i in GRAPH if i.source.startswith("tagllm_core.") and _top(i.target) in {"streamlit", "ui", "pages"}]
    assert not bad, "\n".join(f"{i.source}:{i.line} imports {i.target}" for i in bad)


def test_ui_imports_no_pages_and_pages_import_no_other_page():
    bad = [i for i in GRAPH if _top(i.source) in {"ui", "pages"} and _top(i.target) == "pages"]
    bad += [i for i in GRAPH if i.source == "app" and _top(i.target) == "pages"]
    assert not bad, "\n".join(f"{i.source}:{i.line} imports {i.target}" for i in bad)


@pytest.mark.parametrize("package", ["tagllm_core", "ui"])
def test_no_load_time_import_cycle(package):
    edges: dict[str, set[str]] = {}
    for i in GRAPH:
        if i.kind == "eager" and _top(i.source) == package and _top(i.target) == package:
            edges.setdefault(i.source, set()).add(i.target)
    assert edges, package
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle on load: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_every_engine_module_is_in_one_band_of_the_picture():
    places = {m.split(".", 1)[1]: [label for label, names in PICTURE.bands if m.split(".", 1)[1] in names]
              for m in engine_modules()}
    wrong = {m: bands for m, bands in places.items() if len(bands) != 1}
    assert not wrong, f"modules in no band or in several of the picture in docs/ARCHITECTURE.md: {wrong}"


def test_load_time_imports_go_down_the_bands():
    band = {f"tagllm_core.{name}": i for i, (_, names) in enumerate(PICTURE.bands) for name in names}
    up = [i for i in GRAPH if i.kind == "eager" and i.source in band and i.target in band
          and band[i.target] < band[i.source]]
    assert not up, "\n".join(
        f"{i.source}:{i.line} imports {i.target} on load, a band above it in docs/ARCHITECTURE.md" for i in up
    )


def test_every_arrow_of_the_picture_is_a_real_import_of_its_kind():
    assert len(PICTURE.arrows) > 20
    real = {(i.source, i.target, i.kind) for i in GRAPH}
    eager = {(s, t) for s, t, k in real if k == "eager"}
    wrong = [a for a in PICTURE.arrows if a not in real or (a[2] == "lazy" and a[:2] in eager)]
    assert not wrong, f"arrows of docs/ARCHITECTURE.md that are not imports of that kind: {wrong}"


def test_every_ui_module_is_in_the_picture():
    words = set(re.findall(r"\w+", PICTURE.outside))
    missing = [m for m in ui_modules() if m != "ui.__init__" and m.split(".", 1)[1] not in words]
    assert not missing, f"ui modules missing from the picture in docs/ARCHITECTURE.md: {missing}"


def test_the_picture_reader_reads_bands_and_arrows():
    text = "## Layers\n\n```text\n ui/ cards ─► charts\n│ top   cli ┄► jobs\n│       jobs\n│ low   paths\n```\n"
    picture = read_picture(text)
    assert picture.bands == [("top", {"cli", "jobs"}), ("low", {"paths"})]
    assert picture.arrows == [("ui.cards", "ui.charts", "eager"), ("tagllm_core.cli", "tagllm_core.jobs", "lazy")]


@pytest.mark.parametrize("module", engine_modules() + ui_modules())
def test_every_module_has_its_paragraph(module):
    assert module in PARAGRAPHS, (
        f"docs/ARCHITECTURE.md has no paragraph for {module}: add `**`{module.split('.', 1)[1]}`**` "
        "(ui modules: `**`ui.name`**`) with what it owns and *May import:*"
    )


@pytest.mark.parametrize("module", engine_modules() + ui_modules())
def test_a_module_imports_only_what_its_paragraph_allows(module):
    paragraph = PARAGRAPHS.get(module)
    if paragraph is None:
        pytest.skip("no paragraph (test_every_module_has_its_paragraph fails)")
    mine = [i for i in GRAPH if i.source == module and _project(i) and i.kind != "types" and i.target != module]
    bad = [i for i in mine if i.kind == "eager" and i.target not in paragraph.eager]
    bad += [i for i in mine if i.kind == "lazy" and i.target not in paragraph.eager | paragraph.lazy]
    assert not bad, "\n".join(
        f"{i.source}:{i.line} imports {i.target} ({i.kind}), not in its paragraph of docs/ARCHITECTURE.md" for i in bad
    )


def test_the_paragraphs_name_only_real_modules():
    real = set(engine_modules()) | set(ui_modules())
    named = set(PARAGRAPHS) | {m for p in PARAGRAPHS.values() for m in p.eager | p.lazy}
    assert named <= real, f"docs/ARCHITECTURE.md names modules that do not exist: {sorted(named - real)}"


def test_the_paragraph_parser_reads_both_lists():
    text = "**`model`** owns it. *May\nimport:* `stack`, `ui.x`. *Lazily:* `tags`.\n\nnext `heads`\n"
    assert doc_paragraphs(text) == {
        "tagllm_core.model": Paragraph(
            "tagllm_core.model", frozenset({"tagllm_core.stack", "ui.x"}), frozenset({"tagllm_core.tags"})
        )
    }
