"""The shape of the code base, checked: sizes, import cycles, private names, layers.

Rules (issue 9 of the project): no module in ``src/rmtprune`` over ``MAX_MODULE_LINES``
lines and no function over ``MAX_FUNCTION_LINES`` lines of code (docstring, blank and
comment lines not counted); no import cycle between rmtprune modules (imports inside
functions and under ``if TYPE_CHECKING`` count too, so neither a deferred nor a type-only
import can hide a cycle: both still mean the two modules need each other); no private name
(``_x``) imported from another module. Issue 19 adds: at most ``MAX_TOP_LEVEL_MODULES``
modules at the top of ``src/rmtprune`` besides ``__init__.py`` (packages do not count), and
only ``rmtprune.paper`` and ``rmtprune.cli`` import ``rmtprune.paper`` (the library never
does). Stated exceptions live in ``EXCEPTIONS`` with their reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "rmtprune"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 3
PAPER = "rmtprune.paper"
MAY_IMPORT_PAPER = ("rmtprune.paper", "rmtprune.cli")

# "module path" or "module path:function qualname" -> why it may exceed the limit.
EXCEPTIONS: dict[str, str] = {}

# Debt recorded when these rules were introduced (issue 9), all paid since. The tests fail when a
# new violation appears *and* when a listed one is gone but still listed, so these lists can only
# shrink.
KNOWN_SIZE_DEBT: set[str] = set()
KNOWN_CYCLES: list[list[str]] = []
KNOWN_PRIVATE_IMPORTS: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _code_lines(node: ast.AST, source_lines: list[str], docstring: ast.AST | None) -> int:
    start, end = node.lineno, node.end_lineno or node.lineno  # type: ignore[attr-defined]
    skip: set[int] = set()
    if docstring is not None:
        skip.update(range(docstring.lineno, (docstring.end_lineno or docstring.lineno) + 1))
    count = 0
    for number in range(start, end + 1):
        text = source_lines[number - 1].strip()
        if number in skip or not text or text.startswith("#"):
            continue
        count += 1
    return count


def _functions(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                found.append((name, child))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return found


def _docstring_node(node: ast.AST) -> ast.AST | None:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[0]
    return None


def size_violations() -> list[str]:
    """Every module and function over its limit, as ``"where: n lines"``."""
    found = []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        if len(lines) > MAX_MODULE_LINES:
            found.append((name, f"{name}: {len(lines)} lines"))
        for qualname, node in _functions(ast.parse(text)):
            n = _code_lines(node, lines, _docstring_node(node))
            if n > MAX_FUNCTION_LINES:
                found.append((f"{name}:{qualname}", f"{name}:{qualname}: {n} lines of code"))
    return [message for key, message in found if key not in EXCEPTIONS]


def _debt_key(message: str) -> str:
    return message.split(": ")[0]


def _imports(module: str, tree: ast.Module) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` for every import in ``tree``, wherever it stands."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                out.append((base, [alias.name for alias in child.names]))
            visit(child)

    visit(tree)
    return out


def _resolve(target: str, names: list[str]) -> set[str]:
    """The rmtprune modules an import statement depends on.

    ``from package import submodule`` depends on the submodule only: the package's
    ``__init__`` is loaded first by every import below it, which is not a dependency.
    """
    submodules = {f"{target}.{name}" for name in names if f"{target}.{name}" in MODULES}
    if target in MODULES and (not names or len(submodules) < len(names)):
        submodules.add(target)
    return submodules


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, names in _imports(name, ast.parse(path.read_text())):
            graph[name] |= _resolve(target, names) - {name}
    return graph


def import_cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def top_level_modules() -> list[str]:
    """The modules (not packages) directly in ``src/rmtprune`` besides ``__init__.py``."""
    return sorted(p.name for p in SRC.glob("*.py") if p.name != "__init__.py")


def paper_importers() -> list[str]:
    """``"a imports b"`` for every module outside ``MAY_IMPORT_PAPER`` that imports the paper."""
    found = []
    for name, targets in import_graph().items():
        if _within(name, MAY_IMPORT_PAPER):
            continue
        found.extend(f"{name} imports {t}" for t in sorted(targets) if _within(t, (PAPER,)))
    return found


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(f"{p}.") for p in packages)


def private_imports() -> list[str]:
    """``from other_module import _name`` across modules (dunder names allowed)."""
    found = []
    for name, path in MODULES.items():
        for target, names in _imports(name, ast.parse(path.read_text())):
            if not target.startswith("rmtprune") or target == name:
                continue
            for imported in names:
                private = imported.startswith("_") and not imported.startswith("__")
                if private and f"{target}.{imported}" not in MODULES:
                    found.append(f"{name} imports {target}.{imported}")
    return found


def test_the_checker_sees_the_package() -> None:
    assert "rmtprune" in MODULES and "rmtprune.cli.app" in MODULES
    assert any(name.startswith("rmtprune.rmt") for name in MODULES)


def test_the_checker_counts_code_lines_without_docstrings() -> None:
    source = 'def f():\n    """Doc\n    string."""\n    # comment\n\n    return 1\n'
    tree = ast.parse(source)
    (_, node), *_ = _functions(tree)
    assert _code_lines(node, source.splitlines(), _docstring_node(node)) == 2


def test_at_most_three_stated_exceptions() -> None:
    assert len(EXCEPTIONS) <= 3, EXCEPTIONS
    assert all(reason.strip() for reason in EXCEPTIONS.values())


def test_no_module_or_function_over_the_limits() -> None:
    found = {_debt_key(m): m for m in size_violations()}
    new = sorted(m for key, m in found.items() if key not in KNOWN_SIZE_DEBT)
    assert not new, "\n".join(new)
    paid = sorted(KNOWN_SIZE_DEBT - set(found))
    assert not paid, f"no longer over the limit, remove from KNOWN_SIZE_DEBT: {paid}"


def test_no_import_cycles() -> None:
    assert import_cycles() == KNOWN_CYCLES


def test_the_cycle_checker_counts_type_checking_imports() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rmtprune.rmt import x\n"
    imports = _imports("rmtprune.plotting", ast.parse(source))
    assert ("rmtprune.rmt", ["x"]) in imports


def test_at_most_three_top_level_modules() -> None:
    modules = top_level_modules()
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules


def test_only_the_paper_and_the_cli_import_the_paper() -> None:
    assert paper_importers() == []


def test_no_private_names_imported_across_modules() -> None:
    assert sorted(private_imports()) == sorted(KNOWN_PRIVATE_IMPORTS)
