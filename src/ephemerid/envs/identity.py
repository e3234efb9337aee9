"""An environment's identity: a content hash of all that defines it, checked at submit.

What defines an environment: the requirements file's text (and any file it names: a nested
``-r``, a wheel or a source folder in the code), or the ``pip`` list; the Python version; whether
it inherits the machine's packages; the platform; or the image. Two jobs with the same identity
share one build (``envs/<id>/``).

A requirements file is read here, before anything is rented, and refused (SpecError naming the
line) for what would make the build depend on something the job does not carry, or let a
credential travel: an option that points at another index (``-i``, ``--index-url``,
``--extra-index-url``, ``--trusted-host``), a ``--find-links``/``-r``/``-c`` that is a URL, a
URL holding a user or password, a ``${VARIABLE}``, an absolute path, a path leaving the code
folder, or one that is not in the job's code.
"""

from __future__ import annotations

import hashlib
import json
import platform
import posixpath
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ephemerid.envs.spec import Environment
from ephemerid.errors import SpecError

IDENTITY_VERSION = 1  # raise it when what an identity covers changes: every environment rebuilds
ID_CHARS = 16
MAX_NESTING = 5
# option -> whether it takes a value
ALLOWED_OPTIONS = {
    "--no-index": False,
    "--pre": False,
    "--prefer-binary": False,
    "--require-hashes": False,
    "--only-binary": True,
    "--no-binary": True,
}
PATH_OPTIONS = {  # options whose value is a path in the code folder
    "-r": "requirement",
    "--requirement": "requirement",
    "-c": "requirement",
    "--constraint": "requirement",
    "-f": "folder",
    "--find-links": "folder",
}
EDITABLE = frozenset({"-e", "--editable"})
INDEX_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "--trusted-host", "--index"})
_CREDENTIALS = re.compile(r"://[^/\s@]+@")
_PACKAGE_FILE = (".whl", ".tar.gz", ".zip", ".tgz")

# the code's files, by path relative to the code folder (posix), each read on demand
CodeFiles = Mapping[str, Callable[[], bytes]]


@dataclass(frozen=True)
class Identity:
    id: str
    python: str  # the version the build uses ("3.11")
    platform: str


def this_platform() -> str:
    return f"{sys.platform}-{platform.machine()}"


def this_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def identify(
    env: Environment, code: CodeFiles, *, python: str = "", where: str = "environment"
) -> Identity:
    """The identity of ``env`` for a job whose code holds ``code``; SpecError if it is unusable.

    ``python``: the version a build without ``environment.python`` gets (the runner's own).
    """
    version = env.python or python or this_python()
    material: dict[str, object] = {
        "v": IDENTITY_VERSION,
        "image": env.image or "",
        "python": "" if env.image else version,
        "inherit": env.inherit,
        "platform": "" if env.image else this_platform(),
        "pip": list(env.pip or []),
    }
    files: dict[str, str] = {}
    if env.requirements is not None:
        req = f"{where}.requirements"
        if env.requirements not in code:
            raise SpecError(
                f"{req}: '{env.requirements}' is not a file in the job's code folder: add it, "
                "or fix the path (it is relative to the code folder)"
            )
        _scan_file(env.requirements, code, files, req, depth=0)
    for n, line in enumerate(env.pip or []):
        _check_line(line, "", code, files, f"{where}.pip.{n}", depth=0)
    material["files"] = dict(sorted(files.items()))
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:ID_CHARS]
    return Identity(digest, str(material["python"]), str(material["platform"]))


def _scan_file(name: str, code: CodeFiles, files: dict[str, str], where: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise SpecError(f"{where}: requirements nested deeper than {MAX_NESTING} files")
    data = code[name]()
    files[name] = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{where}: '{name}' is not UTF-8 text: {exc.reason}") from exc
    base = posixpath.dirname(name)
    for number, line in logical_lines(text):
        _check_line(line, base, code, files, f"{where} ('{name}', line {number})", depth)


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, text) of each requirement line: continuations joined, comments dropped."""
    lines: list[tuple[int, str]] = []
    pending, first = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            first = number
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = re.sub(r"(^|\s)#.*$", "", pending + raw).strip()
        pending = ""
        if line:
            lines.append((first, line))
    return lines


def _check_line(
    line: str, base: str, code: CodeFiles, files: dict[str, str], where: str, depth: int
) -> None:
    if "${" in line:
        raise SpecError(
            f"{where}: '{line:.80}' names an environment variable; no secret or setting travels "
            "in a requirements file: write the value, or ship a wheel in the code folder"
        )
    if _CREDENTIALS.search(line):
        raise SpecError(
            f"{where}: '{line:.40}...' holds a user or password in a URL; no credential travels "
            "with a job: put the private package's wheel in the code folder and name its path"
        )
    words = line.split()
    if not words[0].startswith("-"):
        _check_package(words[0], base, code, files, where)
        return
    option, _, value = words[0].partition("=")
    if not value and len(words) > 1:
        value = words[1]
    if option.startswith("-") and not option.startswith("--") and len(option) > 2 and not value:
        option, value = option[:2], option[2:]  # -rbase.txt
    if option in INDEX_OPTIONS:
        raise SpecError(
            f"{where}: '{option}' points the installer at another index, which ephemerid refuses "
            "(no index, and no credential for one, travels with a job): put the package's wheel "
            "in the code folder and name it, or use --find-links with a folder of wheels there"
        )
    if option in EDITABLE:
        raise SpecError(
            f"{where}: '{option}' (an editable install) would point into one job's scratch "
            "folder, which goes at its teardown, while the environment is shared: write the "
            "path without -e (e.g. ./mypackage)"
        )
    if option in ALLOWED_OPTIONS:
        if ALLOWED_OPTIONS[option] and not value:
            raise SpecError(f"{where}: '{option}' needs a value, e.g. {option} :all:")
        return
    kind = PATH_OPTIONS.get(option)
    if kind is None:
        allowed = ", ".join(sorted([*ALLOWED_OPTIONS, *PATH_OPTIONS]))
        raise SpecError(
            f"{where}: option '{option}' is not allowed in a job's requirements; the allowed "
            f"ones are {allowed}"
        )
    if not value:
        raise SpecError(f"{where}: '{option}' needs a path, e.g. {option} ./wheels")
    if "://" in value:
        raise SpecError(
            f"{where}: '{option} {value:.60}' is a URL; it must be a path in the code folder "
            "(a web page of packages is another index, which ephemerid refuses)"
        )
    path = _inside(value, base, where)
    if kind == "requirement":
        if path not in code:
            raise SpecError(f"{where}: '{value}' is not a file in the job's code folder")
        _scan_file(path, code, files, where, depth + 1)
    else:
        _hash_local(path, value, code, files, where)


def _check_package(
    word: str, base: str, code: CodeFiles, files: dict[str, str], where: str
) -> None:
    """A requirement: a name (nothing to check here) or a local file or folder, hashed."""
    if "://" in word:
        return  # a direct URL (no credential, checked above): the installer fetches it
    local = word.startswith((".", "/")) or word.endswith(_PACKAGE_FILE)
    if local:
        _hash_local(_inside(word, base, where), word, code, files, where)


def _inside(value: str, base: str, where: str) -> str:
    if value.startswith("/"):
        raise SpecError(
            f"{where}: '{value}' is an absolute path; write it relative to the requirements file "
            "so it names a file in the job's code"
        )
    path = posixpath.normpath(posixpath.join(base, value))
    if path == ".." or path.startswith("../"):
        raise SpecError(f"{where}: '{value}' leaves the job's code folder: keep it inside")
    return "" if path == "." else path


def _hash_local(path: str, shown: str, code: CodeFiles, files: dict[str, str], where: str) -> None:
    if path in code:
        files[path] = hashlib.sha256(code[path]()).hexdigest()
        return
    prefix = f"{path}/" if path else ""
    inside = sorted(name for name in code if name.startswith(prefix))
    if not inside:
        raise SpecError(
            f"{where}: '{shown}' is not in the job's code folder (a file or folder there, "
            "relative to the requirements file): add it, or fix the path"
        )
    for name in inside:
        files[name] = hashlib.sha256(code[name]()).hexdigest()
