"""The layers contract, read from the code's own import statements (module level and inside functions:
a lazy import only hides a direction): core (`maga_core`) < application (`maga`) < presentation
(`maga.book`) < command line (`maga.cli`, `maga.commands`). A module imports only its own layer or
lower ones; no two modules import each other through any path; an import of these packages inside a
function carries a comment, on its line or in the comment and import lines right above it, saying it
saves start-up time."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

LAYERS = ("core", "application", "presentation", "cli")
PACKAGES = ("maga_core", "maga")


def layer(module: str) -> int:
    if module == "maga_core" or module.startswith("maga_core."):
        return 0
    if module == "maga.book" or module.startswith("maga.book."):
        return 2
    if module in ("maga.cli", "maga.commands") or module.startswith("maga.commands."):
        return 3
    return 1


@dataclass
class Report:
    upward: list[str] = field(default_factory=list)
    circles: list[list[str]] = field(default_factory=list)
    unexplained_lazy: list[str] = field(default_factory=list)
    modules: int = 0


def modules_under(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every package of PACKAGES found directly under `root`."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = f
    return out


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_pkg else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names] + [base]


def _says_startup(lines: list[str], lineno: int) -> bool:
    i = lineno - 1
    if "start-up" in lines[i]:
        return True
    i -= 1
    while i >= 0 and lines[i].strip().startswith(("#", "from ", "import ")):
        if lines[i].strip().startswith("#") and "start-up" in lines[i]:
            return True
        i -= 1
    return False


def check(root: Path) -> Report:
    mods = modules_under(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    report, edges = Report(modules=len(mods)), {m: set() for m in mods}
    for m, f in mods.items():
        text = f.read_text()
        lines, tree = text.splitlines(), ast.parse(text)
        in_function = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            found = {resolve(t) for t in _targets(node, m, f.name == "__init__.py")
                     if t.split(".")[0] in PACKAGES} - {None}
            found = {t for t in found if t != m and not m.startswith(t + ".")}  # its own package above it
            if found and id(node) in in_function and not _says_startup(lines, node.lineno):
                report.unexplained_lazy.append(f"{f.relative_to(root)}:{node.lineno}")
            for t in sorted(found):
                edges[m].add(t)
                if layer(t) > layer(m):
                    report.upward.append(f"{f.relative_to(root)}:{node.lineno}: {LAYERS[layer(m)]} {m} "
                                         f"imports {LAYERS[layer(t)]} {t}")
    report.circles = _circles(edges)
    return report


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]; counter[0] += 1; stack.append(start); on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out
