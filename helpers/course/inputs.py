"""What the checks run on: random tensors drawn from a seeded generator, and stand-in networks
with which the refiner's training step is checked without the U-Net or CSPN exercises.
"""

from __future__ import annotations

import torch
import torch.nn as nn


# ------------------------------------------------------------------------------ fixed inputs
def rand(gen: torch.Generator, *shape, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def blobs(gen: torch.Generator, *shape) -> torch.Tensor:
    """Smooth random masks (B, H, W) bool, some touching the border."""
    noise = torch.rand(shape[0], 1, *shape[1:], generator=gen)
    return (
        nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)[:, 0] > 0.5
    )


class StandInCoarse(nn.Module):
    """A coarse segmenter with a BatchNorm whose statistics must stay frozen: (B, 3, H, W) ->
    probabilities."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, classes, 3, padding=1), nn.BatchNorm2d(classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(image)).softmax(1)


class StandInPropagation(nn.Module):
    """T differentiable steps H^{t+1} = softmax(log H^t + a / 2) on the first C affinity channels,
    so the training step can be checked without the CSPN exercises."""

    def __init__(self, result_type, iterations: int = 2):
        super().__init__()
        self.result_type, self.iterations = result_type, iterations

    def forward(self, h0, raw, iterations=None):
        maps = [h0]
        for _ in range(self.iterations if iterations is None else iterations):
            maps.append(
                (torch.log(maps[-1].clamp_min(1e-6)) + 0.5 * raw[:, : h0.shape[1]]).softmax(1)
            )
        return self.result_type(maps[-1], maps, raw)


def stand_in_refiner(pkg, method: str, deep: bool, boundary_weight: float, state: dict):
    """The student's :class:`Refiner` with stand-in networks whose weights are ``state``: only
    ``train`` and ``training_loss`` (and ``refine``, not an exercise) of the student's code run."""
    model = pkg.refiner.Refiner(
        StandInCoarse(),
        method=method,
        start="coarse",
        classes=2,
        width=2,
        depth=1,
        iterations=2,
        perturb=0.0,
        deep_supervision=deep,
        boundary_weight=boundary_weight,
    )
    model.guidance = nn.Conv2d(5, model.layout.channels, 3, padding=1)
    if model.propagator is not None:
        model.propagator = StandInPropagation(pkg.propagation.PropagationResult)
    model.load_state_dict(state)
    return model


def stand_in_state(method: str, gen: torch.Generator) -> dict:
    """Random weights for :func:`stand_in_refiner` (BatchNorm statistics included)."""
    channels = {"cspn": 8, "control": 2}[method]
    state = {
        "coarse.conv.weight": rand(gen, 2, 3, 3, 3, scale=0.5),
        "coarse.conv.bias": rand(gen, 2, scale=0.5),
        "coarse.norm.weight": 1 + rand(gen, 2, scale=0.2),
        "coarse.norm.bias": rand(gen, 2, scale=0.2),
        "coarse.norm.running_mean": rand(gen, 2, scale=0.2),
        "coarse.norm.running_var": 1 + torch.rand(2, generator=gen),
        "coarse.norm.num_batches_tracked": torch.tensor(0),
        "guidance.weight": rand(gen, channels, 5, 3, 3, scale=0.5),
        "guidance.bias": rand(gen, channels, scale=0.5),
    }
    return state
