"""Tiny learnable datasets shared by the tests."""

import torch

from helpers.data.dataset import PetSegmentation


def toy_data(n=12, size=24, seed=0, side=None):
    """Bright squares (the pet) on dark noise, of random size (or ``side``) and place."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 60, (n, 3, size, size), generator=g, dtype=torch.uint8)
    trimaps = torch.full((n, size, size), 2, dtype=torch.uint8)
    for i in range(n):
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        s = side or int(torch.randint(6, size // 2, (1,), generator=g))
        trimaps[i, y : y + s, x : x + s] = 1
        images[i, :, y : y + s, x : x + s] += 150
    return PetSegmentation(images, trimaps, [f"toy_{i}" for i in range(n)])
