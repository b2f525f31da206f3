"""Checkpoints that never lose work: atomic writes, safe loads, explicit compatibility checks."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import uuid
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, truncated, or made for another configuration."""


def library_versions() -> dict:
    import torchvision

    # the thread count is recorded because CPU results are reproducible only at the same count
    # (README)
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


# the checkout holding helpers/ (runs/, data/ and notebooks/ live there); helpers/core/ is two below
REPO_ROOT = Path(__file__).resolve().parents[2]


def display_path(path: Path) -> str:
    """A path relative to the repository where possible, so outputs hold no machine paths."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return Path(path).name if os.environ.get("WORKBOOK_HIDE_PATHS") else str(path)


def file_slug(text: str, fill: str = "-", keep: str = "") -> str:
    """``text`` as a file name every system accepts: letters, digits, ``_.-`` and the characters
    of ``keep`` stay, every run of others becomes ``fill``."""
    return re.sub(f"[^A-Za-z0-9_.{re.escape(keep)}-]+", fill, text)


def _temporary_beside(path: Path) -> Path:
    # unique per process *and* call: two writers of one file never share a temporary name
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    an interrupted write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (same scheme as :func:`atomic_save`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@contextlib.contextmanager
def file_lock(path: str | Path):
    """Hold an exclusive lock on ``path`` + ``.lock`` while a read-modify-write runs, so two
    processes updating one file do not lose each other's entries. Where the platform has no
    ``fcntl`` (Windows) the update is still atomic, only not serialised."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): atomic, not serialised
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def safe_load(path: str | Path) -> dict:
    """Load with ``weights_only=True`` (no code execution); a broken file raises CheckpointError."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"checkpoint {display_path(path)} holds Python objects besides tensors and was "
                "refused (loading it could run code); it was not written by this workbook: "
                "delete it to retrain, or restore a good copy"
            ) from None
        raise CheckpointError(
            f"checkpoint {display_path(path)} is unreadable or truncated ({_first_line(exc)}); "
            "delete it to retrain, or restore a good copy"
        ) from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "spec" not in obj:
        raise CheckpointError(
            f"checkpoint {display_path(path)} is not a workbook checkpoint (no state_dict / spec)"
        )
    return obj


def _first_line(exc: Exception) -> str:
    """The gist of a load error, one line. torch's own message goes on to suggest
    ``weights_only=False``, i.e. running whatever code the file holds: never pass that on."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "weights_only" not in ln]
    first = lines[0].split(". ")[0].rstrip(".") if lines else "cannot be read"
    return f"{type(exc).__name__}: {first}"


def describe_difference(saved: dict, expected: dict) -> str:
    keys = sorted(set(saved) | set(expected))
    diffs = [
        f"{k}: saved {saved.get(k)!r}, expected {expected.get(k)!r}"
        for k in keys
        if saved.get(k) != expected.get(k)
    ]
    return "; ".join(diffs)


def check_spec(ckpt: dict, spec: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose spec (architecture and training settings) differs."""
    if ckpt["spec"] != spec:
        raise CheckpointError(
            f"checkpoint {display_path(path)} was made for another setting: "
            f"{describe_difference(ckpt['spec'], spec)}"
        )
