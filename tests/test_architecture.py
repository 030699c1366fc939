"""The package's shape: no import cycles, no module over 600 lines, docs/architecture.md names modules that exist,
and benchmarks/results/ holds only curated files listed in its manifest (or cited by the documents and code).

Static checks (ast and text only): nothing of the package is imported or run, so the file takes a second or two.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "diffusers_evdit"
RESULTS = ROOT / "benchmarks" / "results"
MANIFEST = RESULTS / "MANIFEST.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAX_LINES = 600
MAX_RESULTS = 60

# Modules over MAX_LINES that another change in flight splits (issue 22). Shrinking list: the coordinator removes an
# entry once its split is merged; the test fails on an entry whose file is gone or has shrunk, so it cannot go stale.
OVERSIZED_PENDING_SPLIT = set()

# Imports inside functions that close a cycle today (the processors -> parallel -> plan -> processors cycle of issue
# 22, held together by function-level imports). Shrinking list, as above: an entry that no longer closes a cycle fails.
LAZY_CYCLE_EDGES_PENDING = set()

# Private names imported from another module today (owned by changes in flight). Shrinking list, as above.
PRIVATE_IMPORTS_PENDING = set()

# Modules docs/architecture.md names for the target layout that other changes in flight create, and modules of today
# that those changes move (so the map does not name them). Shrinking lists: stale entries fail.
PLANNED_MODULES = set()
MODULES_BEING_MOVED = set()


# ----------------------------------------------------------------------------------------------------------- modules


def _module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(importer: str, node) -> set[str]:
    """The package modules an import statement loads (a ``from pkg import name`` of a submodule loads it too)."""
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        module = _resolve(importer, node)
        targets = {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in MODULES}


def _is_type_checking(node) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_nodes(tree, module_level: bool):
    """Import statements of a module: at module level (also inside module-level try/if blocks, not under
    ``if TYPE_CHECKING``), or all of them."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif _is_type_checking(node):
            continue
        elif not module_level or isinstance(node, (ast.If, ast.Try, ast.With, ast.ExceptHandler)):
            todo.extend(ast.iter_child_nodes(node))


def import_graph(module_level: bool = True) -> dict[str, set[str]]:
    """Edges importer -> imported package module. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` unless
    the importer lives inside ``a.b`` (then that package is already being imported)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges = set()
        for node in _import_nodes(tree, module_level):
            for target in _imported(name, node):
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    prefix = ".".join(parts[:i])
                    if prefix in MODULES and not (name == prefix or name.startswith(prefix + ".")):
                        edges.add(prefix)
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level():
    cycle = find_cycle(import_graph(module_level=True))
    assert cycle is None, f"import cycle at module level: {' -> '.join(cycle)}"


def test_no_import_cycle_through_function_level_imports():
    graph = import_graph(module_level=False)
    absent = sorted(edge for edge in LAZY_CYCLE_EDGES_PENDING if edge[1] not in graph.get(edge[0], set()))
    assert not absent, f"remove from LAZY_CYCLE_EDGES_PENDING (no such import any more): {absent}"
    reduced = {m: targets - {t for i, t in LAZY_CYCLE_EDGES_PENDING if i == m} for m, targets in graph.items()}
    for importer, target in sorted(LAZY_CYCLE_EDGES_PENDING):
        closes = find_cycle({**reduced, importer: reduced[importer] | {target}})
        assert closes, f"({importer}, {target}) closes no cycle now: remove it from LAZY_CYCLE_EDGES_PENDING"
    cycle = find_cycle(reduced)
    assert cycle is None, f"import cycle (counting imports inside functions): {' -> '.join(cycle)}"


def test_no_private_name_is_imported_from_another_module():
    found = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("diffusers_evdit")):
                source = _resolve(name, node)
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.add((name, source, alias.name))
    new = sorted(found - PRIVATE_IMPORTS_PENDING)
    assert not new, f"private names imported across modules (make them public in one place): {new}"
    stale = sorted(PRIVATE_IMPORTS_PENDING - found)
    assert not stale, f"remove from PRIVATE_IMPORTS_PENDING: {stale}"


def test_no_module_over_600_lines():
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in MODULES.values()}
    over = sorted(f"{path} ({n} lines)" for path, n in sizes.items()
                  if n > MAX_LINES and path not in OVERSIZED_PENDING_SPLIT)
    assert not over, f"modules over {MAX_LINES} lines (split them by job): {over}"
    stale = sorted(p for p in OVERSIZED_PENDING_SPLIT if sizes.get(p, 0) <= MAX_LINES)
    assert not stale, f"remove from OVERSIZED_PENDING_SPLIT (gone or small now): {stale}"


def test_no_script_over_600_lines():
    """The examples, benchmark and docs scripts follow the package's rule (one job a file)."""
    scripts = [p for folder in ("examples", "benchmarks", "docs") for p in sorted((ROOT / folder).glob("*.py"))]
    assert len(scripts) > 10, "the scripts were not found"
    over = sorted(f"{p.relative_to(ROOT).as_posix()} ({n} lines)" for p in scripts
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not over, f"scripts over {MAX_LINES} lines (split them by job): {over}"


# ------------------------------------------------------------------------------------------------ the map of modules


def architecture_modules() -> list[str]:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    block = re.search(r"<!-- modules -->(.*?)<!-- /modules -->", text, re.S)
    assert block, "docs/architecture.md needs its module list between <!-- modules --> and <!-- /modules -->"
    names = re.findall(r"^- `([\w.]+)`", block.group(1), re.M)
    assert names, "no modules in the list of docs/architecture.md"
    return names


def test_architecture_names_only_modules_that_exist():
    names = architecture_modules()
    missing = sorted(n for n in names if n not in MODULES and n not in PLANNED_MODULES)
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"
    stale = sorted(n for n in PLANNED_MODULES if n in MODULES or n not in names)
    assert not stale, f"remove from PLANNED_MODULES (they exist now, or the map no longer names them): {stale}"


def test_architecture_names_every_module():
    names = set(architecture_modules())
    unnamed = sorted(m for m in MODULES if m not in names and m not in MODULES_BEING_MOVED)
    assert not unnamed, f"add these modules to the list in docs/architecture.md (one line each): {unnamed}"
    stale = sorted(m for m in MODULES_BEING_MOVED if m not in MODULES or m in names)
    assert not stale, f"remove from MODULES_BEING_MOVED: {stale}"


# ----------------------------------------------------------------------------------------------------------- results

# Where a result counts as cited: the documents and the code that read results.
CITING = ["BENCHMARKS.md", "README.md", "docs/**/*.md", "notebooks/*.ipynb", "notebooks/*.py", "benchmarks/*.py",
          "benchmarks/*.sh", "examples/*.py", "examples/*.sh", "diffusers_evdit/**/*.py", "tests/*.py"]


def result_files() -> list[str]:
    return sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file())


def manifest_rows() -> dict[str, list[str]]:
    """file (relative to benchmarks/results) -> the backticked documents of its "cited by" cell."""
    rows = {}
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([^`]+)` \|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 6, f"MANIFEST.md: a row needs 6 cells (file, what, command, hardware, date, cited " \
                                    f"by): {line}"
            assert match.group(1) not in rows, f"MANIFEST.md lists {match.group(1)} twice"
            rows[match.group(1)] = re.findall(r"`([^`]+)`", cells[5])
    return rows


def _citing_texts() -> dict[str, str]:
    files = {p for pattern in CITING for p in ROOT.glob(pattern) if p.is_file()}
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8", errors="replace") for p in sorted(files)}


def _names(doc: str, text: str, name: str) -> bool:
    """Whether ``text`` (of ``doc``) names the result ``name``: its path below results/, its file name (top level, or
    ``doc`` in the same folder) or its folder (inside a folder)."""
    if f"results/{name}" in text or name in text:
        return True
    head, _, tail = name.partition("/")
    if tail and (ROOT / doc).parent == (RESULTS / name).parent and Path(name).name in text:
        return True
    return re.search(rf"(?<![\w-]){re.escape(head if tail else name)}(?![\w-])", text) is not None


def test_results_are_few():
    assert len(result_files()) <= MAX_RESULTS, (
        f"benchmarks/results/ holds {len(result_files())} files (at most {MAX_RESULTS}): summarise raw logs, drop "
        "superseded runs (see MANIFEST.md)"
    )


def test_every_result_is_listed_or_cited():
    listed = manifest_rows()
    texts = _citing_texts()
    loose = [f for f in result_files() if f not in listed
             and not any(f"results/{f}" in t for t in texts.values())]
    assert not loose, f"files under benchmarks/results/ neither in MANIFEST.md nor cited: {loose}"


def test_manifest_rows_are_files_cited_where_it_says():
    texts = _citing_texts()
    files = set(result_files())
    rows = manifest_rows()
    gone = sorted(f for f in rows if f not in files)
    assert not gone, f"MANIFEST.md lists files that do not exist: {gone}"
    wrong = []
    for name, docs in rows.items():
        for doc in docs:
            path = ROOT / doc
            if not path.is_file():
                wrong.append(f"{name}: {doc} does not exist")
            elif not _names(doc, texts.get(doc) or path.read_text(encoding="utf-8", errors="replace"), name):
                wrong.append(f"{name}: {doc} does not name it")
    assert not wrong, f"MANIFEST.md 'cited by' entries that do not hold: {wrong}"


@pytest.mark.parametrize("doc", ["BENCHMARKS.md", "README.md"])
def test_results_named_by_the_documents_exist(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    named = set(re.findall(r"benchmarks/results/([\w./=+-]+\.(?:json|md|jsonl|gz))", text))
    missing = sorted(n for n in named if not (RESULTS / n).is_file())
    assert not missing, f"{doc} names results that do not exist: {missing}"
