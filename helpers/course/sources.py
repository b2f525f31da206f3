"""Where the files of the student edition come from: a checkout of the workbook, or an installed
wheel (which carries the non-package files in ``helpers/course/workbook/``).

The list is one manifest, ``handout.txt`` beside this file: ``helpers/`` itself, plus the
patterns it names. ``setup.py`` reads the same manifest when it builds a wheel.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # helpers/
MANIFEST = Path(__file__).resolve().with_name("handout.txt")
BUNDLE = Path(__file__).resolve().with_name("workbook")  # in a wheel: the manifest's files
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
# which edition this copy is: the student edition's own checks cannot compute the solution
# (``python -m helpers assignment`` writes "student" here)
EDITION = "solution"


def manifest_patterns(manifest: Path = MANIFEST) -> list[str]:
    """The manifest's glob patterns (comments and blank lines left out; "!" marks exclusions)."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def handout_excluded(rel: str, manifest: Path = MANIFEST) -> bool:
    """Whether the package file ``rel`` (``helpers/...``) stays out of the hand-out."""
    return any(fnmatch(rel, p[1:]) for p in manifest_patterns(manifest) if p.startswith("!"))


def default_root() -> Path:
    """The checkout this package lives in, or the wheel's bundled copy of the manifest's files."""
    checkout = PACKAGE.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "notebooks").is_dir():
        return checkout
    if BUNDLE.is_dir():
        return BUNDLE
    raise FileNotFoundError(
        f"{PACKAGE} is neither in a checkout of the workbook nor an installed "
        "wheel with its notebooks: reinstall the workbook"
    )


def package_files(package: Path = PACKAGE) -> list[Path]:
    """The package's own files (sources and data), without caches or a wheel's bundle."""
    return sorted(
        p
        for p in package.rglob("*")
        if p.is_file()
        and not SKIP_DIRS & set(p.relative_to(package).parts)
        and BUNDLE not in p.parents
        and p.suffix != ".pyc"
    )


def workbook_files(root: Path | None = None) -> dict[str, Path]:
    """Relative path (posix) -> file, for every file of the student edition: the ``helpers``
    package beside ``root`` (or this one) and the manifest's files under ``root``."""
    root = Path(root) if root is not None else default_root()
    package = root / "helpers" if (root / "helpers").is_dir() else PACKAGE
    files = {f"helpers/{p.relative_to(package).as_posix()}": p for p in package_files(package)}
    for pattern in manifest_patterns(package / "course" / "handout.txt"):
        if pattern.startswith("!"):
            continue
        matches = sorted(p for p in root.glob(pattern) if p.is_file())
        if not matches:
            raise FileNotFoundError(
                f"{root}: nothing matches {pattern!r} of the hand-out's manifest"
            )
        files.update({p.relative_to(root).as_posix(): p for p in matches})
    return files
