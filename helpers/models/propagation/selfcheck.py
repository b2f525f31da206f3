"""The fused kernels check themselves before they are trusted on a device.

The Triton kernels were checked on the GPUs this project had; a student's GPU, driver or Triton
may compile them differently, or not at all. So the first time they would run on a device (per
device and input dtype), :func:`kernel_problem` runs CSPN and DySPN (7x7) on a small random
problem with both the kernels and the PyTorch path, forward and backward, and compares every map
and gradient with the tolerances of ``tests/test_kernels.py``. If the kernels fail to compile,
raise, or differ, the run says so in one line naming the error, and the propagators use the
PyTorch path for the rest of the run (:meth:`~.base.Propagator.backend_for`): the same numbers
to float32 rounding, only slower.
"""

from __future__ import annotations

from functools import lru_cache

import torch

RTOL, ATOL = 1e-5, 1e-6  # those of tests/test_kernels.py


def _maps_and_grads(make, backend: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every map of a propagation and the gradients of its inputs, on ``backend``."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    model = make(backend)
    model.trusted = True  # the check itself must not check again
    result = model(*inputs)
    weights = torch.linspace(-1, 1, result.final.numel(), device=result.final.device)
    loss = sum((m * weights.view_as(m)).sum() for m in result.maps[1:])
    loss.backward()
    return [m.detach() for m in result.maps] + [t.grad for t in inputs]


def compare_kernels(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if the kernels agree with the PyTorch path on ``device`` for ``dtype`` inputs; else
    one line saying how they did not."""
    from .propagators import CSPN, DySPN

    gen = torch.Generator().manual_seed(0)
    h0 = torch.softmax(3 * torch.randn(2, 2, 9, 11, generator=gen), 1)
    problems = (
        (lambda b: CSPN(3, backend=b), [h0, torch.randn(2, 8, 9, 11, generator=gen)]),
        (
            lambda b: DySPN(3, 7, backend=b),
            [
                h0,
                torch.randn(2, 48, 9, 11, generator=gen),
                torch.randn(2, 12, 9, 11, generator=gen),
            ],
        ),
    )
    for make, inputs in problems:
        inputs = [t.to(device=device, dtype=dtype) for t in inputs]
        want = _maps_and_grads(make, "torch", inputs)
        got = _maps_and_grads(make, "triton", inputs)
        name = type(make("torch")).__name__
        for i, (a, b) in enumerate(zip(got, want)):
            if a is None or b is None or a.shape != b.shape:
                return f"{name}: output {i} is missing or of the wrong shape"
            if not torch.allclose(a.float(), b.float(), rtol=RTOL, atol=ATOL):
                err = (a.float() - b.float()).abs().max().item()
                return f"{name}: output {i} differs from the PyTorch path by up to {err:.3g}"
    return None


@lru_cache(maxsize=None)
def kernel_problem(device: str, dtype: str) -> str | None:
    """:func:`compare_kernels` once per device and dtype (a cached fact about this machine), its
    compile errors and exceptions caught; a problem is printed once, in one line."""
    device_ = torch.device(device)
    try:
        # the first forward may come inside evaluation (no_grad or inference mode) or autocast:
        # the check needs none of them, and runs its own backward
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_.type, enabled=False),
        ):
            problem = compare_kernels(device_, getattr(torch, dtype.split(".")[-1]))
    except Exception as exc:  # a compile error, a launch failure, anything the kernels raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        problem = f"{type(exc).__name__}: {first}"[:300]
    if problem is not None:
        print(
            f"the fused Triton kernels failed their self-check on {device} ({problem}); "
            "propagating with the PyTorch path instead (the same numbers, slower)"
        )
    return problem
