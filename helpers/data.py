"""Oxford-IIIT Pet in its official layout: locating the data, loading, splitting, caching.

Layout read (the official one, also written by :mod:`helpers.synthetic`)::

    ROOT/oxford-iiit-pet/images/<id>.jpg
    ROOT/oxford-iiit-pet/annotations/trimaps/<id>.png    1 = pet, 2 = background, 3 = boundary
    ROOT/oxford-iiit-pet/annotations/{trainval,test}.txt  lines "<id> <class> <species> <breed>"

Task: the binary SimpleOxfordPet mask (pet = trimap 1 or 3, background = 2), or the 3-class
trimap with ``classes=3`` (0 background, 1 pet, 2 boundary).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .checkpoint import REPO_ROOT, atomic_save, display_path
from .config import Config

DATA_DIR = REPO_ROOT / "data"
CACHE_VERSION = 1


class DataError(RuntimeError):
    """A file of the dataset is missing, unreadable or inconsistent (the message names it)."""


# ---------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class DataSource:
    """Where the images come from: ``kind`` is one of root (an argument) / env / local / download / synthetic."""

    kind: str
    root: Path          # the folder holding oxford-iiit-pet/

    @property
    def name(self) -> str:
        """Short label for results and cache keys ("real" data vs the synthetic stand-in)."""
        return "synthetic" if self.kind == "synthetic" else f"oxford-pets:{self.root.name}"

    def describe(self) -> str:
        where = {"root": "the data root given", "env": "PETS_ROOT", "local": "data/oxford-iiit-pet", "download": "downloaded",
                 "synthetic": "embedded synthetic stand-in (no real dataset found)"}[self.kind]
        return f"data source: {where} -> {display_path(self.root / 'oxford-iiit-pet')}"


def resolve_source(cfg: Config, data_root: str | Path | None = None, download: bool | None = None,
                   verbose: bool = True, data_dir: Path = DATA_DIR) -> DataSource:
    """Pick the data source, in this order, and print the choice.

    1. ``data_root``, or ``cfg.pets_root`` (the environment variable ``PETS_ROOT``, read by
       :func:`~helpers.config.load_config`); the folder must hold ``oxford-iiit-pet/``;
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
        source = _try_download(data_dir) if (cfg.download if download is None else download) else None
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
        raise DataError(f"{what} is set but empty: set it to the folder holding oxford-iiit-pet/, "
                        "or unset it to use data/oxford-iiit-pet or the synthetic stand-in")
    root = Path(root).expanduser()
    bases = [Path.cwd()]
    if not root.is_absolute():
        bases += [Path(os.environ["WORKBOOK_START_DIR"])] if os.environ.get("WORKBOOK_START_DIR") else []
        bases.append(REPO_ROOT)
    tried = []
    for base in bases:
        candidate = (base / root).resolve()
        if (candidate / "oxford-iiit-pet").is_dir():
            return candidate
        if candidate not in tried:
            tried.append(candidate)
    places = " or ".join(str(t) for t in tried)
    raise DataError(f"{what} {str(root)!r} does not hold an 'oxford-iiit-pet' folder (looked in {places}; "
                    "expected oxford-iiit-pet/images and oxford-iiit-pet/annotations)")


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


# ---------------------------------------------------------------------------------- reading
def read_split_ids(root: Path, split_file: str) -> list[str]:
    """Image ids listed in ``annotations/<split_file>`` (comment lines skipped)."""
    path = root / "oxford-iiit-pet" / "annotations" / split_file
    if not path.is_file():
        raise DataError(f"missing split list: {path}")
    try:
        # utf-8-sig: a list saved by an editor that writes a byte-order mark reads like any other
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not a UTF-8 text file ({exc})") from None
    ids, seen, repeats = [], set(), 0
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DataError(f"{path}:{n}: expected '<id> <class> <species> <breed>', got {line!r}")
        if parts[0] in seen:
            repeats += 1   # an image listed twice would count twice in training and in every metric
            continue
        seen.add(parts[0])
        ids.append(parts[0])
    if repeats:
        warnings.warn(f"{path}: {repeats} line(s) repeat an id listed earlier; each image is used once")
    if not ids:
        raise DataError(f"{path} lists no images: it needs lines '<id> <class> <species> <breed>', "
                        "one per image (as in the official annotations)")
    return ids


@contextlib.contextmanager
def _decoding(what: str, path: Path):
    """PIL's errors while decoding ``path`` as one :class:`DataError` naming the file (``what``:
    image or trimap): missing, too large to decode safely (a decompression bomb), unreadable."""
    try:
        yield
    except FileNotFoundError:
        raise DataError(f"missing {what}: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what} too large to decode safely: {path} ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"unreadable {what}: {path} ({exc})") from None


def load_rgb(path: Path) -> Image.Image:
    """Open any image the real dataset holds as RGB: JPEG, PNG with alpha, GIF, modes
    RGB / P / RGBA / L / CMYK. Transparent pixels are composited onto black."""
    with _decoding("image", path):
        with Image.open(path) as img:
            img.seek(0)  # GIF: first frame
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA"):
                base = Image.new("RGB", img.size, (0, 0, 0))
                base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
                return base
            return img.convert("RGB")


def load_trimap(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The trimap (H, W) uint8 with values in {1, 2, 3}, checked against the image size (W, H)."""
    with _decoding("trimap", path), Image.open(path) as img:
        img.load()
        if img.size != size:
            raise DataError(f"trimap {path} is {img.size[0]}x{img.size[1]} but its image is {size[0]}x{size[1]}")
        arr = np.array(img.convert("L") if img.mode not in ("L", "P") else img)
    bad = np.setdiff1d(np.unique(arr), (1, 2, 3))
    if bad.size:
        raise DataError(f"trimap {path} has values {bad.tolist()} outside {{1, 2, 3}}")
    return arr


def trimap_to_target(trimap: np.ndarray, classes: int = 2) -> np.ndarray:
    """SimpleOxfordPet binary mask (pet = 1 or 3 -> 1, background = 2 -> 0), or with
    ``classes=3`` the trimap as classes 0 background, 1 pet, 2 boundary."""
    if classes == 2:
        return (trimap != 2).astype(np.uint8)
    if classes == 3:
        return np.select([trimap == 2, trimap == 1], [0, 1], 2).astype(np.uint8)
    raise ValueError(f"classes must be 2 or 3, got {classes}")


def split_ids(trainval_ids: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic, disjoint train / val carve of trainval by a hash of each id, so the split
    never depends on file order, seed or machine."""
    threshold = int(round(val_fraction * 1000))
    val = [i for i in trainval_ids if zlib.crc32(i.encode()) % 1000 < threshold]
    train = [i for i in trainval_ids if zlib.crc32(i.encode()) % 1000 >= threshold]
    assert not set(train) & set(val), "train and val overlap"
    if not train or not val:
        raise DataError(f"cannot split {len(trainval_ids)} trainval ids into non-empty train and val")
    return train, val


def decode_split(root: Path, ids: list[str], size: int, on_error: str = "raise",
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode and resize every pair once: images (N, 3, S, S) uint8 (antialiased), trimaps
    (N, S, S) uint8 (nearest). ``on_error="skip"`` skips bad pairs with one warning and a count."""
    from torchvision.transforms.v2 import functional as TF

    from .progress import bar

    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    base = root / "oxford-iiit-pet"
    images, trimaps, kept, skipped = [], [], [], []
    for image_id in bar(ids, progress, desc=f"decoding {len(ids)} images", leave=False):
        try:
            rgb = load_rgb(base / "images" / f"{image_id}.jpg")
            tri = load_trimap(base / "annotations" / "trimaps" / f"{image_id}.png", rgb.size)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append(str(exc))
            continue
        img = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)
        images.append(TF.resize(img, [size, size], antialias=True))
        trimaps.append(TF.resize(torch.from_numpy(tri)[None], [size, size],
                                 interpolation=TF.InterpolationMode.NEAREST)[0])
        kept.append(image_id)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(ids)} pairs; first: {skipped[0]}")
    if not kept:
        raise DataError(f"no readable image/trimap pairs among {len(ids)} ids under {base}")
    return torch.stack(images), torch.stack(trimaps), kept


# ---------------------------------------------------------------------------------- dataset
class PetSegmentation(Dataset):
    """Decoded, resized pairs held in memory. Items: ``(image, target)`` with image (3, S, S)
    float32 in [0, 1] and target (S, S) int64 class map; ``transforms`` (a torchvision v2
    transform) is applied jointly to ``tv_tensors.Image`` and ``tv_tensors.Mask``."""

    def __init__(self, images: torch.Tensor, trimaps: torch.Tensor, ids: list[str], classes: int = 2,
                 transforms=None, fingerprint: str | None = None):
        if len(images) != len(trimaps) or len(images) != len(ids):
            raise ValueError("images, trimaps and ids must have the same length")
        self.images = images
        self.trimaps = trimaps
        self.targets = torch.from_numpy(trimap_to_target(trimaps.numpy(), classes))
        self.ids = list(ids)
        self.classes = classes
        self.transforms = transforms
        self._fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """A digest of what this split holds (see :func:`content_digest`): given by
        :func:`build_datasets` from the decode cache, computed here otherwise."""
        if self._fingerprint is None:
            self._fingerprint = content_digest(self.ids, self.images, self.trimaps)
        return self._fingerprint

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image, target = tv_tensors.Image(self.images[i]), tv_tensors.Mask(self.targets[i])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image.as_subclass(torch.Tensor).float() / 255.0, target.as_subclass(torch.Tensor).long()


# the training crops: a share of the image's area and an aspect ratio (w / h) range. Mild, so the
# pet stays in view; one definition for the DataLoader path and the GPU path (helpers/batches.py)
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (0.8, 1.25)


def train_transforms(size: int):
    """Joint augmentation for training: flips and mild crops (image bilinear, mask nearest)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(),
                       v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)])


def _cache_path(source: DataSource, split_file: str, size: int, data_dir: Path = DATA_DIR) -> Path:
    key = hashlib.sha1(f"{source.root.resolve()}|{split_file}|{size}|{CACHE_VERSION}".encode()).hexdigest()[:12]
    return data_dir / "cache" / f"{source.root.name}-{split_file[:-4]}-{size}px-{key}.pt"


def content_digest(ids: list[str], images: torch.Tensor, trimaps: torch.Tensor) -> str:
    """A digest of decoded data: ids, pixels and trimaps (not file names or times, so a copy of
    the same data is the same data, and any edited pixel is not)."""
    digest = hashlib.sha1("\n".join(ids).encode())
    for t in (images, trimaps):
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy())
    return digest.hexdigest()


def files_signature(root: Path, split_file: str, ids: list[str]) -> str:
    """A digest of the list file and of the size and modification time of every listed image and
    trimap: rewriting, replacing or touching any of them changes it (cheap: no file is read)."""
    base = root / "oxford-iiit-pet"
    digest = hashlib.sha1((base / "annotations" / split_file).read_bytes())
    for image_id in ids:
        for path in (base / "images" / f"{image_id}.jpg", base / "annotations" / "trimaps" / f"{image_id}.png"):
            try:
                st = path.stat()
                digest.update(f"{image_id}|{st.st_size}|{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(f"{image_id}|missing;".encode())
    return digest.hexdigest()


def load_decoded(source: DataSource, split_file: str, size: int, on_error: str = "raise",
                 progress: bool = True, data_dir: Path = DATA_DIR) -> dict:
    """Decoded pairs of one list file, cached on disk (atomic write, ``weights_only`` load).

    The cache is used only while the list and every listed file are unchanged (same
    :func:`files_signature`); any edit on disk decodes again."""
    path = _cache_path(source, split_file, size, data_dir)
    ids = read_split_ids(source.root, split_file)
    signature = files_signature(source.root, split_file, ids)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("signature") == signature:
                return cached
        except Exception:  # a stale or broken cache is only a cache: decode again
            pass
    images, trimaps, kept = decode_split(source.root, ids, size, on_error, progress)
    data = {"images": images, "trimaps": trimaps, "ids": kept, "ids_listed": ids, "signature": signature,
            "content": content_digest(kept, images, trimaps)}   # hashed once here, not in every kernel
    atomic_save(data, path)
    return data


def _subset(data: dict, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    pos = {image_id: i for i, image_id in enumerate(data["ids"])}
    idx = torch.tensor([pos[i] for i in ids if i in pos], dtype=torch.long)
    return data["images"][idx], data["trimaps"][idx], [i for i in ids if i in pos]


def build_datasets(cfg: Config, source: DataSource, size: int | None = None, classes: int = 2,
                   on_error: str = "raise", progress: bool = True, data_dir: Path = DATA_DIR) -> dict[str, PetSegmentation]:
    """train / val / test datasets at ``size`` (default ``cfg.image_size``); caps from the config;
    the decoded pairs are cached under ``data_dir/cache``.

    Train and val come from trainval (see :func:`split_ids`); test is the official test list.
    """
    size = size or cfg.image_size
    trainval = load_decoded(source, "trainval.txt", size, on_error, progress, data_dir)
    test = load_decoded(source, "test.txt", size, on_error, progress, data_dir)
    shared = sorted(set(trainval["ids_listed"]) & set(test["ids_listed"]))
    if shared and not cfg.allow_split_overlap:
        # a test image seen in training makes every test number optimistic
        raise DataError(f"{len(shared)} image(s) are listed in both annotations/trainval.txt and test.txt "
                        f"(first: {', '.join(shared[:3])}) under {display_path(source.root / 'oxford-iiit-pet')}: "
                        "remove them from one list, or set allow_split_overlap=True to measure anyway")
    train_ids, val_ids = split_ids(trainval["ids"], cfg.val_fraction)
    train_ids = train_ids[: cfg.max_train] if cfg.max_train else train_ids
    val_ids = val_ids[: cfg.max_eval] if cfg.max_eval else val_ids
    test_ids = test["ids"][: cfg.max_eval] if cfg.max_eval else test["ids"]
    augment = train_transforms(size) if cfg.augment else None

    def digest(data: dict, ids: list[str]) -> str:   # the subset's identity, from the cached content digest
        content = data.get("content") or content_digest(data["ids"], data["images"], data["trimaps"])
        return hashlib.sha1(f"{content}|{classes}|".encode() + "\n".join(ids).encode()).hexdigest()

    return {"train": PetSegmentation(*_subset(trainval, train_ids), classes, augment, digest(trainval, train_ids)),
            "val": PetSegmentation(*_subset(trainval, val_ids), classes, fingerprint=digest(trainval, val_ids)),
            "test": PetSegmentation(*_subset(test, test_ids), classes, fingerprint=digest(test, test_ids))}
