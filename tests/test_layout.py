"""The shape of the package: modules small enough to read, seams that do not loop back."""

from __future__ import annotations

import ast
from pathlib import Path

import ephemerid

PACKAGE = Path(ephemerid.__file__).parent
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Every ephemerid module ``name`` imports, type-checking-only imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1]])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("ephemerid")}


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_dev_host_modules_import_no_circle() -> None:
    known = modules()
    # the package's __init__ is its public face: ``from ephemerid.devhost import keys`` is an
    # import of the keys module, not of the host that __init__ re-exports
    devhost = {n: p for n, p in known.items() if n.startswith("ephemerid.devhost.")}
    graph = {n: imports_of(n, p) & set(devhost) for n, p in devhost.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(n for n in graph if reaches(n, n, {n}))
    assert circles == []


def test_the_layout_check_sees_a_circle_when_there_is_one(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("if TYPE_CHECKING:\n    from ephemerid.b import B\n")
    assert imports_of("ephemerid.a", a) == {"ephemerid.b", "ephemerid.b.B"}
