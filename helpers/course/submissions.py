"""Finding the submissions in what an instructor collected: one student's folder, a folder of
them, a folder nested one level deeper (as an unzipped download often is), or ``.zip`` files,
extracted safely. Whatever is not a submission is named in a warning, never skipped silently.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .catalogue import AssignmentError

MAX_ZIP_BYTES = 200 * 2**20  # uncompressed: a hand-out with its notebooks is a few MB
MAX_ZIP_FILES = 5000
# what archivers and operating systems add beside the files a student handed in
JUNK = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class Submission:
    """A submission to grade: its ``name`` (the folder or zip name), the folder holding its
    ``helpers/`` and the ``source`` it was found as (the folder or the zip handed in)."""

    name: str
    path: Path
    source: Path


def is_submission(folder: Path) -> bool:
    return (folder / "helpers").is_dir()


def _content(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in JUNK)


def _unwrap(folder: Path) -> Path | None:
    """``folder`` if it holds ``helpers/``, or its only sub-folder if that one does (a download
    unpacked into a folder of its own)."""
    if is_submission(folder):
        return folder
    inside = _content(folder)
    if len(inside) == 1 and inside[0].is_dir() and is_submission(inside[0]):
        return inside[0]
    return None


def extract_zip(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into the new folder ``target``, refusing what could write outside it
    (absolute paths, ``..``, links) or fill the disk (more than ``MAX_ZIP_BYTES`` unpacked or
    ``MAX_ZIP_FILES`` entries). Raises :class:`AssignmentError` naming the archive and why."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ZIP_FILES:
                raise AssignmentError(
                    f"{archive.name}: {len(members)} entries (at most {MAX_ZIP_FILES})"
                )
            total = sum(m.file_size for m in members)
            if total > MAX_ZIP_BYTES:
                raise AssignmentError(
                    f"{archive.name}: {total / 2**20:.0f} MB unpacked (at most "
                    f"{MAX_ZIP_BYTES / 2**20:.0f} MB)"
                )
            for m in members:
                parts = PurePosixPath(m.filename.replace("\\", "/")).parts
                if m.filename.startswith(("/", "\\")) or ".." in parts or ":" in m.filename:
                    raise AssignmentError(
                        f"{archive.name}: entry {m.filename!r} points outside the archive's folder"
                    )
                if stat.S_ISLNK(m.external_attr >> 16):
                    raise AssignmentError(f"{archive.name}: entry {m.filename!r} is a link")
            target.mkdir(parents=True)
            for m in members:
                dest = target.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
                if m.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as out:
                    # copied in chunks with a running count: a header's sizes can lie
                    shutil.copyfileobj(src, out, 2**20)
            written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            if written > MAX_ZIP_BYTES:
                raise AssignmentError(
                    f"{archive.name}: more than {MAX_ZIP_BYTES / 2**20:.0f} MB unpacked"
                )
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise AssignmentError(f"{archive.name}: not a readable zip archive ({exc})") from None
    return target


def find_submissions(path: str | Path, unpack_dir: Path) -> tuple[list[Submission], list[str]]:
    """The submissions under ``path`` (a submission itself, a ``.zip`` of one, or a folder of
    either), zips extracted under ``unpack_dir``; and a warning for every entry that is not one."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        entries = [path]
    elif not path.is_dir():
        raise AssignmentError(f"{path} is neither a folder nor a .zip archive")
    elif _unwrap(path) is not None:
        return [Submission(path.resolve().name, _unwrap(path), path)], []
    else:
        entries = _content(path)
    found, warnings = [], []
    for entry in entries:
        name = entry.stem if entry.is_file() else entry.name
        if entry.is_file() and entry.suffix.lower() == ".zip":
            try:
                folder = extract_zip(entry, unpack_dir / f"{len(found)}-{name}")
            except AssignmentError as exc:
                warnings.append(f"skipped {exc}")
                continue
            root = _unwrap(folder)
        else:
            root = _unwrap(entry) if entry.is_dir() else None
        if root is None:
            warnings.append(
                f"skipped {entry.name}: no helpers/ folder in it (nor in a single folder inside it)"
            )
            continue
        if any(s.name == name for s in found):
            warnings.append(f"skipped {entry.name}: a submission named {name!r} came first")
            continue
        found.append(Submission(name, root, entry))
    if not found:
        raise AssignmentError(
            f"{path} holds no submission: expected a helpers/ folder in it, in "
            "its sub-folders or in .zip archives" + ("".join(f"\n  {w}" for w in warnings))
        )
    return found, warnings
