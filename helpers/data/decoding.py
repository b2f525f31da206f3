"""Reading the official layout: split lists, images and trimaps, and the decoded-image cache.

Every file that cannot be read gives a :class:`~helpers.data.sources.DataError` naming it. The
cache (``data/cache/``) is keyed on the list file and on the size and modification time of every
listed file; the *content digest* (ids, pixels, masks) names the data a model was trained on.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..core.checkpoint import atomic_save
from .sources import CACHE_VERSION, DATA_DIR, DataError, DataSource


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
            repeats += 1  # an image listed twice would count twice in training and in every metric
            continue
        seen.add(parts[0])
        ids.append(parts[0])
    if repeats:
        warnings.warn(
            f"{path}: {repeats} line(s) repeat an id listed earlier; each image is used once"
        )
    if not ids:
        raise DataError(
            f"{path} lists no images: it needs lines '<id> <class> <species> <breed>', "
            "one per image (as in the official annotations)"
        )
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
            raise DataError(
                f"trimap {path} is {img.size[0]}x{img.size[1]} but its image is {size[0]}x{size[1]}"
            )
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
        raise DataError(
            f"cannot split {len(trainval_ids)} trainval ids into non-empty train and val"
        )
    return train, val


def decode_split(
    root: Path, ids: list[str], size: int, on_error: str = "raise", progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode and resize every pair once: images (N, 3, S, S) uint8 (antialiased), trimaps
    (N, S, S) uint8 (nearest). ``on_error="skip"`` skips bad pairs with one warning and a count."""
    from torchvision.transforms.v2 import functional as TF

    from ..core.progress import bar

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
        trimaps.append(
            TF.resize(
                torch.from_numpy(tri)[None],
                [size, size],
                interpolation=TF.InterpolationMode.NEAREST,
            )[0]
        )
        kept.append(image_id)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(ids)} pairs; first: {skipped[0]}")
    if not kept:
        raise DataError(f"no readable image/trimap pairs among {len(ids)} ids under {base}")
    return torch.stack(images), torch.stack(trimaps), kept


def _cache_path(source: DataSource, split_file: str, size: int, data_dir: Path = DATA_DIR) -> Path:
    key = hashlib.sha1(
        f"{source.root.resolve()}|{split_file}|{size}|{CACHE_VERSION}".encode()
    ).hexdigest()[:12]
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
        for path in (
            base / "images" / f"{image_id}.jpg",
            base / "annotations" / "trimaps" / f"{image_id}.png",
        ):
            try:
                st = path.stat()
                digest.update(f"{image_id}|{st.st_size}|{st.st_mtime_ns};".encode())
            except OSError:
                digest.update(f"{image_id}|missing;".encode())
    return digest.hexdigest()


def load_decoded(
    source: DataSource,
    split_file: str,
    size: int,
    on_error: str = "raise",
    progress: bool = True,
    data_dir: Path = DATA_DIR,
) -> dict:
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
    data = {
        "images": images,
        "trimaps": trimaps,
        "ids": kept,
        "ids_listed": ids,
        "signature": signature,
        "content": content_digest(kept, images, trimaps),
    }  # hashed once here, not in every kernel
    atomic_save(data, path)
    return data
