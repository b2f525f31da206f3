"""Batches of a decoded split, served from the device that trains on them (the lean GPU path).

The DataLoader path (:func:`helpers.data.batches.make_loader`) builds every training item on the
CPU: a torchvision transform per image, a collate, then a copy of the batch to the device in
every step. On a GPU that per-image Python work, not the network, sets the pace of a small model.
:class:`DeviceBatches` copies a whole split (uint8 images and targets: 0.2 MB per image at
256 px) to the device once; a batch is then an index into it, and the augmentation, the same
horizontal flip and random resized crop as :func:`helpers.data.dataset.train_transforms` (its scale
and aspect ranges are :data:`helpers.data.dataset.CROP_SCALE` and
:data:`helpers.data.dataset.CROP_RATIO`), runs as one batched ``grid_sample`` there (image bilinear,
mask nearest).

The random numbers (the order, the crop boxes, the flips) come from a CPU ``torch.Generator``
seeded like the DataLoader's and exposed as ``.generator``, so a checkpoint saves and resumes it
the same way. The pixels differ from the DataLoader path's (another sampler, another resampling
kernel), so a run on the device is reproducible with itself, not with a CPU run: that is why
:func:`make_batches` uses it on CUDA only, unless asked.

:func:`split_batches` serves evaluation: the split in order, sliced from the decoded tensors and
converted on the device, with the same numbers as the DataLoader path, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .dataset import CROP_RATIO, CROP_SCALE, PetSegmentation

# the decoded split may take at most this share of the GPU's free memory, so that the models,
# activations and the other splits still fit; beyond it the DataLoader path is used
DEVICE_SHARE = 0.25


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 in [0, 1], as :class:`~helpers.data.dataset.PetSegmentation`
    items are."""
    return images.float() / 255.0


def split_batches(dataset, batch_size: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images (B, 3, S, S) float32 in [0, 1], targets (B, S, S) int64) on ``device``, in dataset
    order.

    A :class:`~helpers.data.dataset.PetSegmentation` without transforms is sliced directly (uint8
    copied, converted on the device: a quarter of the bytes of a float copy); anything else goes
    through the DataLoader. Both give the same values."""
    device = torch.device(device)
    if isinstance(dataset, PetSegmentation) and dataset.transforms is None:
        for lo in range(0, len(dataset), batch_size):
            images = dataset.images[lo : lo + batch_size].to(device, non_blocking=True)
            yield (
                _to_unit(images),
                dataset.targets[lo : lo + batch_size].to(device, non_blocking=True).long(),
            )
        return
    for images, targets in make_loader(dataset, batch_size, shuffle=False):
        yield images.to(device), targets.to(device)


def crop_boxes(
    n: int,
    size: tuple[int, int],
    generator: torch.Generator,
    scale=CROP_SCALE,
    ratio=CROP_RATIO,
    tries: int = 10,
) -> torch.Tensor:
    """(n, 4) int64 boxes (top, left, height, width), torchvision's ``RandomResizedCrop`` rule,
    for n images at once: area a share U(scale) of the image, log aspect (w / h) U(log ratio),
    sides rounded; the first of ``tries`` draws that fits, else the whole image; the position
    uniform over the places it fits."""
    H, W = size
    area = H * W * torch.empty(n, tries).uniform_(*scale, generator=generator)
    aspect = torch.exp(
        torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    )
    w = torch.sqrt(area * aspect).round().long()
    h = torch.sqrt(area / aspect).round().long()
    fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = fits.long().argmax(1)  # the first draw that fits (0 if none)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    any_fit = fits.any(1)
    h = torch.where(any_fit, pick(h), torch.full_like(first, H))
    w = torch.where(any_fit, pick(w), torch.full_like(first, W))
    u = torch.rand(n, 2, generator=generator)
    top = (u[:, 0] * (H - h + 1)).long().clamp(max=H - h)  # uniform over 0 .. H - h
    left = (u[:, 1] * (W - w + 1)).long().clamp(max=W - w)
    return torch.stack([top, left, h, w], 1)


def crop_grid(
    boxes: torch.Tensor, flip: torch.Tensor, size: tuple[int, int], out: tuple[int, int]
) -> torch.Tensor:
    """The ``grid_sample`` grid (n, h_out, w_out, 2) that resizes each box (top, left, h, w) of an
    (H, W) image to ``out``, mirrored left-right where ``flip``: an affine map per image with
    pixel centres aligned (``align_corners=False``), as a bilinear resize of the crop does."""
    H, W = size
    top, left, h, w = boxes.double().unbind(1)
    sign = 1.0 - 2.0 * flip.double()
    theta = torch.zeros(len(boxes), 2, 3, dtype=torch.float64)
    # input x (normalised) = (w / W) u + (2 left + w) / W - 1, u the output's normalised x
    theta[:, 0, 0] = sign * w / W
    theta[:, 0, 2] = (2 * left + w) / W - 1
    theta[:, 1, 1] = h / H
    theta[:, 1, 2] = (2 * top + h) / H - 1
    return F.affine_grid(theta.float(), [len(boxes), 1, *out], align_corners=False)


def flip_and_crop(
    images: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    scale=CROP_SCALE,
    ratio=CROP_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random horizontal flip (p = 1/2) and random resized crop of each pair, on their device.

    images (B, 3, H, W) float, targets (B, H, W) integer -> the same shapes and dtypes; the
    image is resampled bilinearly, the target by its nearest pixel (it stays a class map)."""
    B, _, H, W = images.shape
    boxes = crop_boxes(B, (H, W), generator, scale, ratio)
    flip = torch.rand(B, generator=generator) < 0.5
    grid = crop_grid(boxes, flip, (H, W), (H, W)).to(images.device, non_blocking=True)
    images = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    labels = F.grid_sample(
        targets[:, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False
    )
    return images, labels[:, 0].round().to(targets.dtype)


class DeviceBatches:
    """Shuffled (and, where the split has transforms, augmented) batches of a
    :class:`~helpers.data.dataset.PetSegmentation` held whole on ``device``.

    Iterating gives ``len(self)`` batches (images (B, 3, S, S) float32 in [0, 1], targets
    (B, S, S) int64), every image once per pass, the last batch partial, like the DataLoader
    of :func:`helpers.data.batches.make_loader`; ``generator`` holds the random state."""

    def __init__(self, dataset: PetSegmentation, batch_size: int, shuffle: bool, seed: int, device):
        self.images = dataset.images.to(device)
        self.targets = dataset.targets.to(device)
        self.augment = dataset.transforms is not None
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for chunk in order.split(self.batch_size):
            index = chunk.to(self.images.device, non_blocking=True)
            images, targets = _to_unit(self.images[index]), self.targets[index].long()
            if self.augment:
                images, targets = flip_and_crop(images, targets, self.generator)
            yield images, targets


def fits_on_device(
    dataset: PetSegmentation, device: torch.device, share: float = DEVICE_SHARE
) -> bool:
    """Whether the decoded split takes at most ``share`` of the device's free memory (CUDA)."""
    if device.type != "cuda":
        return True
    need = (
        dataset.images.numel() * dataset.images.element_size()
        + dataset.targets.numel() * dataset.targets.element_size()
    )
    free, _ = torch.cuda.mem_get_info(device)
    return need <= share * free


def make_batches(
    dataset, batch_size: int, shuffle: bool, seed: int, device, on_device: bool | None = None
):
    """The training batches of ``dataset``: :class:`DeviceBatches` where ``on_device`` (default:
    on CUDA, for a :class:`~helpers.data.dataset.PetSegmentation` that fits), else the
    DataLoader."""
    device = torch.device(device)
    if on_device is None:
        on_device = (
            device.type == "cuda"
            and isinstance(dataset, PetSegmentation)
            and fits_on_device(dataset, device)
        )
    if on_device:
        if not isinstance(dataset, PetSegmentation):
            raise TypeError(
                "batches on the device need a decoded PetSegmentation split, not "
                f"{type(dataset).__name__}"
            )
        return DeviceBatches(dataset, batch_size, shuffle, seed, device)
    return make_loader(dataset, batch_size, shuffle, seed)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """A seeded ``DataLoader``: the same ``seed`` gives the same order of batches."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
        persistent_workers=num_workers > 0,
    )
