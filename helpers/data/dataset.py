"""The dataset the models see: decoded splits as tensors, their augmentation, and the three
splits (train and validation carved from ``trainval.txt`` by a hash of each id; the official
``test.txt``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..core.checkpoint import display_path
from ..core.config import Config
from .decoding import content_digest, load_decoded, split_ids, trimap_to_target
from .sources import DATA_DIR, DataError, DataSource


class PetSegmentation(Dataset):
    """Decoded, resized pairs held in memory. Items: ``(image, target)`` with image (3, S, S)
    float32 in [0, 1] and target (S, S) int64 class map; ``transforms`` (a torchvision v2
    transform) is applied jointly to ``tv_tensors.Image`` and ``tv_tensors.Mask``."""

    def __init__(
        self,
        images: torch.Tensor,
        trimaps: torch.Tensor,
        ids: list[str],
        classes: int = 2,
        transforms=None,
        fingerprint: str | None = None,
    ):
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
        return image.as_subclass(torch.Tensor).float() / 255.0, target.as_subclass(
            torch.Tensor
        ).long()


# the training crops: a share of the image's area and an aspect ratio (w / h) range. Mild, so the
# pet stays in view; one definition for the DataLoader path and the GPU path (helpers/batches.py)
CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (0.8, 1.25)


def train_transforms(size: int):
    """Joint augmentation for training: flips and mild crops (image bilinear, mask nearest)."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomResizedCrop(size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
        ]
    )


def _subset(data: dict, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    pos = {image_id: i for i, image_id in enumerate(data["ids"])}
    idx = torch.tensor([pos[i] for i in ids if i in pos], dtype=torch.long)
    return data["images"][idx], data["trimaps"][idx], [i for i in ids if i in pos]


def build_datasets(
    cfg: Config,
    source: DataSource,
    size: int | None = None,
    classes: int = 2,
    on_error: str = "raise",
    progress: bool = True,
    data_dir: Path = DATA_DIR,
) -> dict[str, PetSegmentation]:
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
        raise DataError(
            f"{len(shared)} image(s) are listed in both annotations/trainval.txt and test.txt "
            f"(first: {', '.join(shared[:3])}) under "
            f"{display_path(source.root / 'oxford-iiit-pet')}: "
            "remove them from one list, or set allow_split_overlap=True to measure anyway"
        )
    train_ids, val_ids = split_ids(trainval["ids"], cfg.val_fraction)
    train_ids = train_ids[: cfg.max_train] if cfg.max_train else train_ids
    val_ids = val_ids[: cfg.max_eval] if cfg.max_eval else val_ids
    test_ids = test["ids"][: cfg.max_eval] if cfg.max_eval else test["ids"]
    augment = train_transforms(size) if cfg.augment else None

    # the subset's identity, from the cached content digest
    def digest(data: dict, ids: list[str]) -> str:
        content = data.get("content") or content_digest(
            data["ids"], data["images"], data["trimaps"]
        )
        return hashlib.sha1(f"{content}|{classes}|".encode() + "\n".join(ids).encode()).hexdigest()

    return {
        "train": PetSegmentation(
            *_subset(trainval, train_ids), classes, augment, digest(trainval, train_ids)
        ),
        "val": PetSegmentation(
            *_subset(trainval, val_ids), classes, fingerprint=digest(trainval, val_ids)
        ),
        "test": PetSegmentation(
            *_subset(test, test_ids), classes, fingerprint=digest(test, test_ids)
        ),
    }
