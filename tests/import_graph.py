"""The package's imports, read from the source with ``ast`` (nothing is imported): who imports
whom, which imports sit inside functions, the import circles, and the layers of
docs/development.md. Used by tests/test_import_structure.py."""

from __future__ import annotations

import ast
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "threestudio_like.cli"
    target: str  # the imported project module
    line: int
    in_function: bool


def package_modules(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement loads (``from pkg import sub`` loads ``pkg.sub``)."""
    root = module.split(".")[0]
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolve against the importing module's package
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin for alias in node.names]
    found = []
    for name in names:
        if name.split(".")[0] != root:
            continue
        while name not in modules and "." in name:  # an attribute of a module: the module
            name = name.rsplit(".", 1)[0]
        if name != module and name not in found:
            found.append(name)
    return found


def project_imports(package_dir: Path) -> list[Import]:
    """Every import of a project module by a project module, marked when it runs inside a function."""
    modules = package_modules(package_dir)
    imports = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def walk(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_package, modules):
                        imports.append(Import(module, target, child.lineno, in_function))
                walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        walk(ast.parse(path.read_text(), str(path)), False)
    return imports


def import_circles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def documented_layers(development_md: Path) -> list[tuple[str, list[str]]]:
    """The layer table of docs/development.md, top layer first: ``[(name, [module patterns])]``.
    A row reads ``| name | `pattern`, `pattern` ... | why |``; ``*`` matches within a name."""
    layers = []
    in_table = False
    for line in development_md.read_text().splitlines():
        if line.startswith("| layer |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells[0]) <= {"-", ":"}:
                continue
            layers.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return layers


def layer_of(module: str, layers: list[tuple[str, list[str]]], package: str) -> int | None:
    """Index (0 = top) of the first layer with a pattern matching ``module`` (without the package prefix)."""
    name = module[len(package) + 1 :] if module != package else "__init__"
    for i, (_, patterns) in enumerate(layers):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return i
    return None
