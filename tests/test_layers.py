"""The shape of src/ that issue 12 set: data flows sources → model → catalog → render →
publish / server, nothing imports upward, no import cycle, modules under 400 lines and
functions under 60. Read from the source text (ast), so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "spacy_index"

#: lower numbers sit lower in the data flow; a module may import its own layer or below
LAYERS = {
    "_version": 0, "errors": 0, "urls": 0, "hashing": 0, "model": 0, "model_spacy": 0,
    "gcpause": 0, "singleflight": 0, "config": 0,
    "catalog": 1, "simple": 1, "render": 1,
    "http": 2, "progress": 2,
    "sources": 3, "wheelmeta": 3, "cache": 3, "s3": 3, "publish": 3,
    "api": 4, "mirror": 4, "install": 4,
    "server": 5,
    "cli": 6, "__main__": 7,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return LAYERS.get(top, 8)  # the package root (lazy re-exports) sits on top


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported spacy_index module, at module level) for every import not under
    TYPE_CHECKING; ``from spacy_index import x`` counts as the submodule ``x`` when there is one."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            if node.level:
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in MODULES]
            names = subs or [prefix]
        out += [(n, id(node) in top) for n in names if n in MODULES and n != module]
    return out


def test_nothing_imports_upward():
    upward = [f"{m} -> {t}" for m in MODULES for t, _ in _imports(m)
              if _layer(t) > _layer(m) and _layer(m) < 8]
    assert upward == []


def test_no_import_cycle_at_module_level():
    graph = {m: {t for t, top in _imports(m) if top} for m in MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str] | None:
        if m in path:
            return [*path[path.index(m):], m]
        if m in done:
            return None
        for t in sorted(graph[m]):
            if (cycle := visit(t, [*path, m])) is not None:
                return cycle
        done.add(m)
        return None

    cycles = [c for m in MODULES if (c := visit(m, [])) is not None]
    assert cycles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_function_sizes(module):
    text = MODULES[module].read_text()
    assert text.count("\n") < 400, f"{module}: {text.count(chr(10))} lines"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 60]
    assert long == []


def test_the_checks_see_the_tree():
    # guards the checks above against passing on nothing
    assert len(MODULES) > 80
    assert ("spacy_index.server.routes", True) in [
        (m, top) for m, top in _imports("spacy_index.server.wiring")]
    assert _layer("spacy_index.server.routes") > _layer("spacy_index.model")


SOURCE_KINDS = {"CatalogSource", "FolderSource", "IndexSource"}


def _source_kind_checks(tree: ast.AST) -> list[str]:
    """``isinstance(x, <a source kind>)`` and ``getattr``/``hasattr`` on a name ``source``."""
    found = []
    for n in ast.walk(tree):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            continue
        if n.func.id == "isinstance" and len(n.args) == 2:
            kinds = n.args[1].elts if isinstance(n.args[1], ast.Tuple) else [n.args[1]]
            found += [f"isinstance(…, {k.id}) line {n.lineno}" for k in kinds
                      if isinstance(k, ast.Name) and k.id in SOURCE_KINDS]
        elif n.func.id in ("getattr", "hasattr") and n.args and isinstance(n.args[0], ast.Name) \
                and n.args[0].id in ("source", "found") and len(n.args) >= 2 \
                and not (isinstance(n.args[1], ast.Constant) and n.args[1].value == "cfg"):
            found.append(f"{n.func.id}({n.args[0].id}, …) line {n.lineno}")
    return found


def test_sources_answer_for_themselves():
    """Issue 12: no isinstance on a source kind and no getattr/hasattr probing of a source
    outside server/sources/ (``cfg``, which the upstream source may lack, aside)."""
    where = {m: _source_kind_checks(ast.parse(p.read_text())) for m, p in MODULES.items()
             if not m.startswith("spacy_index.server.sources")}
    assert {m: f for m, f in where.items() if f} == {}
    assert _source_kind_checks(ast.parse("isinstance(s, FolderSource)\nhasattr(source, 'root')"))


def test_no_module_imports_another_modules_private_names():
    """``from spacy_index.x import _name`` means _name is not private: give it a public name."""
    bad = []
    for module, path in MODULES.items():
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("spacy_index") \
                    and n.module != "spacy_index._version":
                bad += [f"{module}: {n.module}.{a.name}" for a in n.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []
