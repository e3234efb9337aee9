"""The product never depends on its test harness: nothing in ``src/ephemerid`` outside
``ephemerid.testing`` imports it, so the function app ships without the simulators.

The CLI is the one exception: its developer commands run the shipped harness (``eph demo
--storage azurite`` starts Azurite; STYLE.md 13: one harness, used by the tests and the CLI).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ephemerid"
HARNESS = "ephemerid.testing"
MAY_USE_THE_HARNESS = ("testing", "cli")  # folders under src/ephemerid


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for each import in ``tree``, at any depth (lazy imports too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_product_code_never_imports_the_test_harness() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in MAY_USE_THE_HARNESS:
            continue
        for line, module in imported(ast.parse(path.read_text(), str(path))):
            if module == HARNESS or module.startswith(f"{HARNESS}."):
                offenders.append(f"src/ephemerid/{relative}:{line} imports {module}")

    assert offenders == []


def test_the_check_sees_lazy_and_from_imports() -> None:
    code = (
        "def connect():\n"
        "    from ephemerid.testing.arm import compute_client\n"
        "import ephemerid.testing\n"
        "from ephemerid import testing\n"
    )
    modules = [m for _, m in imported(ast.parse(code))]

    assert "ephemerid.testing.arm" in modules
    assert "ephemerid.testing" in modules
    assert "ephemerid.testing" in modules[modules.index("ephemerid") :]
