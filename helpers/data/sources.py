"""Oxford-IIIT Pet in its official layout: locating the data, loading, splitting, caching.

Layout read (the official one, also written by :mod:`helpers.data.synthetic`)::

    ROOT/oxford-iiit-pet/images/<id>.jpg
    ROOT/oxford-iiit-pet/annotations/trimaps/<id>.png    1 = pet, 2 = background, 3 = boundary
    ROOT/oxford-iiit-pet/annotations/{trainval,test}.txt  lines "<id> <class> <species> <breed>"

Task: the binary SimpleOxfordPet mask (pet = trimap 1 or 3, background = 2), or the 3-class
trimap with ``classes=3`` (0 background, 1 pet, 2 boundary).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ..core.checkpoint import REPO_ROOT, display_path
from ..core.config import Config

DATA_DIR = REPO_ROOT / "data"
CACHE_VERSION = 1  # part of every cache and synthetic folder name: raise it to invalidate them


class DataError(RuntimeError):
    """A file of the dataset is missing, unreadable or inconsistent (the message names it)."""


@dataclass(frozen=True)
class DataSource:
    """Where the images come from: ``kind`` is one of root (an argument) / env / local / download /
    synthetic."""

    kind: str
    root: Path  # the folder holding oxford-iiit-pet/

    @property
    def name(self) -> str:
        """Short label for results and cache keys ("real" data vs the synthetic stand-in)."""
        return "synthetic" if self.kind == "synthetic" else f"oxford-pets:{self.root.name}"

    def describe(self) -> str:
        where = {
            "root": "the data root given",
            "env": "PETS_ROOT",
            "local": "data/oxford-iiit-pet",
            "download": "downloaded",
            "synthetic": "embedded synthetic stand-in (no real dataset found)",
        }[self.kind]
        return f"data source: {where} -> {display_path(self.root / 'oxford-iiit-pet')}"


def resolve_source(
    cfg: Config,
    data_root: str | Path | None = None,
    download: bool | None = None,
    verbose: bool = True,
    data_dir: Path = DATA_DIR,
) -> DataSource:
    """Pick the data source, in this order, and print the choice.

    1. ``data_root``, or ``cfg.pets_root`` (the environment variable ``PETS_ROOT``, read by
       :func:`~helpers.core.config.load_config`); the folder must hold ``oxford-iiit-pet/``;
    2. ``data_dir/oxford-iiit-pet`` (``data_dir``: the repository's ``data/`` unless given);
    3. a torchvision download into ``data_dir`` when allowed (``download``, default
       ``cfg.download``: on Colab, or with ``WORKBOOK_DOWNLOAD=1``);
    4. otherwise the embedded synthetic dataset, generated once into ``data_dir``.
    """
    what = "data root" if data_root is not None else "PETS_ROOT"
    root = data_root if data_root is not None else cfg.pets_root
    if root is not None:
        source = DataSource("root" if data_root is not None else "env", locate_root(root, what))
    elif (data_dir / "oxford-iiit-pet" / "annotations").is_dir():
        source = DataSource("local", data_dir)
    else:
        source = (
            _try_download(data_dir) if (cfg.download if download is None else download) else None
        )
        if source is None:
            n_tv, n_te = cfg.synthetic_trainval, cfg.synthetic_test
            folder = data_dir / f"synthetic-v{CACHE_VERSION}-{n_tv}-{n_te}"
            from .synthetic import write_synthetic_dataset

            write_synthetic_dataset(folder, n_tv, n_te, seed=0, progress=verbose)
            source = DataSource("synthetic", folder)
    if verbose:
        print(source.describe())
    return source


def locate_root(root: str | Path, what: str = "PETS_ROOT") -> Path:
    """The absolute folder holding ``oxford-iiit-pet/`` that ``root`` names.

    A relative path is tried against the current directory, then against the directory the
    user started the runner in (``WORKBOOK_START_DIR``), then against the repository root:
    notebook kernels run in ``notebooks/``, so a path that is valid from where the user typed
    it must not break there."""
    if not str(root).strip():
        # an empty value is a mistake (a typo in an export), never a request for the synthetic data
        raise DataError(
            f"{what} is set but empty: set it to the folder holding oxford-iiit-pet/, "
            "or unset it to use data/oxford-iiit-pet or the synthetic stand-in"
        )
    root = Path(root).expanduser()
    bases = [Path.cwd()]
    if not root.is_absolute():
        bases += (
            [Path(os.environ["WORKBOOK_START_DIR"])] if os.environ.get("WORKBOOK_START_DIR") else []
        )
        bases.append(REPO_ROOT)
    tried = []
    for base in bases:
        candidate = (base / root).resolve()
        if (candidate / "oxford-iiit-pet").is_dir():
            return candidate
        if candidate not in tried:
            tried.append(candidate)
    places = " or ".join(str(t) for t in tried)
    raise DataError(
        f"{what} {str(root)!r} does not hold an 'oxford-iiit-pet' folder (looked in {places}; "
        "expected oxford-iiit-pet/images and oxford-iiit-pet/annotations)"
    )


def _try_download(target: Path, timeout_s: float = 60.0) -> DataSource | None:
    """Download with torchvision (md5-checked); on failure say why and return None."""
    from torchvision.datasets import OxfordIIITPet

    print(f"downloading Oxford-IIIT Pet (about 800 MB) into {display_path(target)} ...")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # a stalled connection fails instead of hanging forever
    try:
        OxfordIIITPet(str(target), split="trainval", target_types="segmentation", download=True)
        return DataSource("download", target)
    except Exception as exc:  # network errors come in many types; all mean "no download"
        print(f"download failed ({type(exc).__name__}: {exc}); using the synthetic dataset instead")
        return None
    finally:
        socket.setdefaulttimeout(old)
