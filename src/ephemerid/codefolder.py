"""Which files of a local code folder go into its snapshot, and what to say when it is too big.

Left out, always: ``.git``, ``__pycache__``, ``.venv``, ``node_modules``, ``.ipynb_checkpoints``,
the folders passed as ``skip`` (ephemerid's own home and bucket, when they lie inside the code
folder) and any other ephemerid home (a folder holding ``jobs.db`` and ``bucket/``). Left out
as asked: whatever a ``.gitignore`` or an ``.ephemeridignore`` excludes, in git's own pattern
language (``pathspec``'s gitwildmatch). Each folder's ignore files apply below it, as git reads
nested ``.gitignore`` files; within a folder the ``.ephemeridignore`` comes after the
``.gitignore``, so its ``!pattern`` can take back what git ignores. As in git, a file inside an
ignored folder cannot be taken back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pathspec

from ephemerid.errors import SpecError

IGNORE_FILES = (".gitignore", ".ephemeridignore")
ALWAYS_SKIPPED = frozenset({".git", "__pycache__", ".venv", "node_modules", ".ipynb_checkpoints"})


@dataclass(frozen=True)
class _Rules:
    """The ignore patterns of one folder, matched against paths relative to it."""

    base: Path
    spec: pathspec.PathSpec


def code_files(root: Path, skip: list[Path] | tuple[Path, ...] = ()) -> list[Path]:
    """The files of ``root`` a snapshot takes, sorted; links are returned as found (unresolved):
    the caller refuses one that leads out of ``root``."""
    skipped = {p.resolve() for p in skip}
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(folder: Path, rules: list[_Rules]) -> None:
        real = folder.resolve()
        if real in seen or real in skipped or (folder != root and _is_a_home(folder)):
            return
        seen.add(real)
        rules = rules + _rules_of(folder)
        for entry in sorted(folder.iterdir()):
            is_dir = entry.is_dir()
            if (is_dir and entry.name in ALWAYS_SKIPPED) or _ignored(entry, is_dir, rules):
                continue
            if is_dir:
                if entry.is_symlink() and not entry.resolve().is_relative_to(root.resolve()):
                    found.append(entry)  # refused by the link check, naming it
                else:
                    walk(entry, rules)
            elif entry.is_file():
                found.append(entry)

    walk(root, [])
    return sorted(found)


def _is_a_home(folder: Path) -> bool:
    """An ephemerid home (another than the one in use, say): its job store and its bucket."""
    return (folder / "jobs.db").is_file() and (folder / "bucket").is_dir()


def _rules_of(folder: Path) -> list[_Rules]:
    lines: list[str] = []
    for name in IGNORE_FILES:
        path = folder / name
        if path.is_file():
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        return []
    return [_Rules(folder, pathspec.GitIgnoreSpec.from_lines(lines))]


def _ignored(entry: Path, is_dir: bool, rules: list[_Rules]) -> bool:
    """Git's answer: the deepest folder's last matching pattern decides."""
    verdict = False
    for rule in rules:
        relative = entry.relative_to(rule.base).as_posix() + ("/" if is_dir else "")
        result = rule.spec.check_file(relative)
        if result.include is not None:
            verdict = result.include
    return verdict


def check_size(root: Path, files: list[Path], limit: int, shown_as: str) -> None:
    """SpecError when the files hold more than ``limit`` bytes, naming the biggest folders."""
    sizes: dict[str, int] = {}
    for path in files:
        parts = path.relative_to(root).parts
        top = f"{parts[0]}/" if len(parts) > 1 else parts[0]
        sizes[top] = sizes.get(top, 0) + _size(path)
    total = sum(sizes.values())
    if total <= limit:
        return
    biggest = sorted(sizes.items(), key=lambda item: (-item[1], item[0]))[:3]
    listed = ", ".join(f"{name} ({_human(size)})" for name, size in biggest)
    example = next((n for n, _ in biggest if n.endswith("/")), biggest[0][0])
    raise SpecError(
        f"code: '{shown_as}' holds {total} bytes ({_human(total)}), more than the {limit}-byte "
        f"limit (EPHEMERID_CODE_LIMIT_BYTES); the largest: {listed}. Leave them out with a line "
        f"such as '{example}' in {Path(shown_as) / '.ephemeridignore'} (or .gitignore), and pass "
        "data to the job as inputs"
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a dangling link: the link check names it
        return 0


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
