"""Checkpoints that never lose work: atomic writes, safe loads, explicit compatibility checks."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, truncated, or made for another configuration."""


def library_versions() -> dict:
    import torchvision

    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "python": platform.python_version()}


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    an interrupted write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def safe_load(path: str | Path) -> dict:
    """Load with ``weights_only=True`` (no code execution); a broken file raises CheckpointError."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path.name} is unreadable or truncated ({type(exc).__name__}: {exc}); "
                              "delete it to retrain, or restore a good copy") from None
    if not isinstance(obj, dict) or "state_dict" not in obj or "spec" not in obj:
        raise CheckpointError(f"checkpoint {path.name} is not a workbook checkpoint (no state_dict / spec)")
    return obj


def describe_difference(saved: dict, expected: dict) -> str:
    keys = sorted(set(saved) | set(expected))
    diffs = [f"{k}: saved {saved.get(k)!r}, expected {expected.get(k)!r}" for k in keys if saved.get(k) != expected.get(k)]
    return "; ".join(diffs)


def check_spec(ckpt: dict, spec: dict, path: str | Path) -> None:
    """Refuse a checkpoint whose spec (architecture and training settings) differs."""
    if ckpt["spec"] != spec:
        raise CheckpointError(f"checkpoint {Path(path).name} was made for another setting: "
                              f"{describe_difference(ckpt['spec'], spec)}")
