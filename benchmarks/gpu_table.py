"""The `full` profile sized on paper for the GPUs students get (T4, L4, A100, H100).

Every aten operation of one training step (forward, backward, optimiser) and of one evaluation
forward pass of each model of the `full` profile is counted on the CPU: its FLOPs
(``torch.utils.flop_counter``'s formulas), the bytes it reads and writes (its tensors' sizes:
no fusion, every operand from memory) and one launch. Autocast runs as on a GPU (bfloat16; on
the CPU here), so convolutions move half-width operands and the casts are counted too.
Counted at batch 2 and scaled to the profile's batch 16 (every count is linear in the batch).

A step's time on a GPU is then modelled as a roofline per operation, plus a launch cost:

    T = sum_i max(F_i / P_i, B_i / W) / e  +  N * L

with P_i the GPU's dense tensor-core peak (bfloat16, float16 on a T4) for convolutions and
matrix products and its float32 peak otherwise, W its memory bandwidth, N the operations
launched. The efficiency e and the launch cost L are fitted (least squares) to the three
refiner steps measured on the H200 (CSPN 43 ms, DySPN 55 ms, control 38 ms, batch 16, 256 px,
2026-11-27) and the same e and L are used for every GPU: an assumption (a T4's kernels reach
another share of its peak), stated with the table. The whole workbook's minutes then follow
from the registry's epochs on the whole dataset (2,944 training, 736 validation, 3,669 test
images) with an evaluation of the validation split after every epoch.

    python benchmarks/gpu_table.py            # prints the table (markdown) and the fit
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

# published dense peaks (no sparsity): tensor-core TFLOPS at the autocast dtype, float32 TFLOPS
# (non-tensor), memory bandwidth GB/s. NVIDIA data sheets: T4 (float16; bfloat16 only emulated),
# L4, A100 40 GB PCIe/SXM (Colab's), H100 SXM, H200 SXM.
GPUS = {
    "T4": (65.0, 8.1, 320.0),
    "L4": (121.0, 30.3, 300.0),
    "A100 40GB": (312.0, 19.5, 1555.0),
    "H100 SXM": (989.0, 67.0, 3350.0),
    "H200": (989.0, 67.0, 4800.0),
}
# measured on the H200, 2026-11-27 (docs/benchmarks.md#measured-on-the-h200): ms per training step
H200_STEPS = {"control": 38.0, "cspn": 43.0, "dyspn": 55.0}
TENSOR_OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm"}
# the whole dataset's splits at the profile's val_fraction (official trainval 3,680, test 3,669)
TRAINVAL, TEST = 3680, 3669


@dataclass
class Counts:
    """Per operation: (packet name, FLOPs, bytes)."""

    ops: list

    def scaled(self, factor: float) -> "Counts":
        return Counts([(n, f * factor, b * factor) for n, f, b in self.ops])

    @property
    def flops(self) -> float:
        return sum(f for _, f, _ in self.ops)

    @property
    def bytes(self) -> float:
        return sum(b for _, _, b in self.ops)

    def roofline(self, tensor_tflops: float, fp32_tflops: float, gbps: float) -> float:
        """sum_i max(F_i / P_i, B_i / W), seconds."""
        total = 0.0
        for name, f, b in self.ops:
            peak = tensor_tflops if name in TENSOR_OPS else fp32_tflops
            total += max(f / (peak * 1e12), b / (gbps * 1e9))
        return total


class OpCounter(TorchDispatchMode):
    """Every aten operation that computes (views excluded): its FLOPs and bytes moved."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        returns = func._schema.returns
        if any(r.alias_info is not None and not r.alias_info.is_write for r in returns):
            return out  # a view: no kernel, no bytes
        flops = 0
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            flops = counter(*args, **kwargs, out_val=out)
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        moved = sum(t.numel() * t.element_size() for t in tensors)
        self.ops.append((func._overloadpacket.__name__, flops, moved))
        return out


def count(model, images, targets, train: bool) -> Counts:
    """The operations of one training step (forward, loss, backward, AdamW) or one evaluation
    forward, under bfloat16 autocast as training runs on a GPU."""
    from helpers.models.refiner import Refiner
    from helpers.training.loop import make_optimiser

    optimiser = make_optimiser(model, lr=1e-4)
    model.train(train)
    with OpCounter() as counter:
        if train:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if isinstance(model, Refiner):
                    loss = model.training_loss(model(images), targets)
                else:
                    loss = torch.nn.functional.cross_entropy(model(images), targets)
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(images)
    return Counts(counter.ops)


def models(cfg):
    from helpers.models.coarse import CoarseSegmenter
    from helpers.models.refiner import Refiner

    coarse = CoarseSegmenter.from_config(cfg)
    out = {"coarse": coarse}
    for method in ("control", "cspn", "dyspn"):
        out[method] = Refiner.from_config(cfg, coarse, method)
    return out


def fit_h200(train: dict) -> tuple[float, float]:
    """Efficiency e and launch cost L (s) from the H200's three measured refiner steps."""
    peaks = GPUS["H200"]
    rows = [(train[m].roofline(*peaks), len(train[m].ops), H200_STEPS[m] / 1e3) for m in H200_STEPS]
    # T = S / e + N L: least squares in (1/e, L)
    sxx = sum(s * s for s, _, _ in rows)
    sxn = sum(s * n for s, n, _ in rows)
    snn = sum(n * n for _, n, _ in rows)
    sxt = sum(s * t for s, _, t in rows)
    snt = sum(n * t for _, n, t in rows)
    det = sxx * snn - sxn * sxn
    inv_e = (sxt * snn - snt * sxn) / det
    launch = (sxx * snt - sxn * sxt) / det
    return 1 / inv_e, launch


def seconds(counts: Counts, gpu: str, efficiency: float, launch: float) -> float:
    return counts.roofline(*GPUS[gpu]) / efficiency + len(counts.ops) * launch


def workbook_minutes(cfg, step: dict, forward: dict, scale: float = 1.0) -> dict:
    """Minutes of each setting on the whole dataset from per-model step and evaluation-forward
    seconds (batch ``cfg.batch_size``), at ``step_scale`` ``scale``."""
    from helpers.workbook.stages import epochs_for, scaled

    n_val = round(TRAINVAL * cfg.val_fraction)
    n_train = TRAINVAL - n_val
    steps = math.ceil(n_train / cfg.batch_size)
    val_batches, test_batches = math.ceil(n_val / cfg.batch_size), math.ceil(TEST / cfg.batch_size)
    coarse_epochs = epochs_for(cfg.coarse_epochs, cfg.coarse_min_steps, n_train, cfg.batch_size)
    refine = scaled(
        epochs_for(cfg.refine_epochs, cfg.refine_min_steps, n_train, cfg.batch_size), scale
    )
    converged = max(coarse_epochs, scaled(cfg.converged_max_epochs, scale))

    def stage(kind: str, epochs: int) -> float:
        per_epoch = steps * step[kind] + val_batches * forward[kind]
        return epochs * per_epoch + (val_batches + test_batches) * forward[kind]

    report = (
        stage("coarse", coarse_epochs)
        + (9 * val_batches + test_batches) * forward["coarse"]  # the guided filter's grid
        + stage("coarse", refine)  # the coarse net trained on
        + sum(stage(m, refine) for m in ("control", "cspn", "dyspn"))
    )
    second = (
        stage("coarse", converged)
        + stage("coarse", refine)
        + sum(stage(m, refine) for m in ("control", "cspn", "dyspn"))
    )
    return {"report": report / 60, "workbook": (report + second) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="counted at this batch, scaled")
    parser.add_argument("--session", type=float, default=60, help="minutes of a session")
    args = parser.parse_args()

    from helpers.core.config import profile_config
    from helpers.workbook.plan import FLOOR, GRID, suggested_budget

    torch.manual_seed(0)
    cfg = profile_config("full", device="cpu", propagation_backend="torch")
    size, factor = cfg.image_size, cfg.batch_size / args.batch
    images = torch.rand(args.batch, 3, size, size)
    targets = (torch.rand(args.batch, size, size) > 0.5).long()
    train, forward = {}, {}
    for name, model in models(cfg).items():
        train[name] = count(model, images, targets, train=True).scaled(factor)
        forward[name] = count(model, images, targets, train=False).scaled(factor)
    print(f"full profile, batch {cfg.batch_size}, {size} px (counted at batch {args.batch}):")
    print("| model | training step GFLOP | GB moved | operations | evaluation GFLOP |")
    print("|---|---|---|---|---|")
    for name in train:
        print(
            f"| {name} | {train[name].flops / 1e9:.0f} | {train[name].bytes / 1e9:.1f} | "
            f"{len(train[name].ops)} | {forward[name].flops / 1e9:.0f} |"
        )
    efficiency, launch = fit_h200(train)
    print(
        f"\nfit on the H200's refiner steps: efficiency {efficiency:.2f}, "
        f"launch {launch * 1e6:.1f} us"
    )
    for m, ms in H200_STEPS.items():
        got = seconds(train[m], "H200", efficiency, launch) * 1e3
        print(f"  {m}: measured {ms:.0f} ms, modelled {got:.1f} ms ({got / ms - 1:+.0%})")

    budget = suggested_budget(args.session)
    print(
        f"\n| GPU | report's setting, min | whole workbook, min | --budget {budget} "
        f"(a {args.session:g}-min session) |"
    )
    print("|---|---|---|---|")
    for gpu in GPUS:
        step = {k: seconds(c, gpu, efficiency, launch) for k, c in train.items()}
        fwd = {k: seconds(c, gpu, efficiency, launch) for k, c in forward.items()}
        full = workbook_minutes(cfg, step, fwd)
        scale = 1.0
        while (
            workbook_minutes(cfg, step, fwd, scale)["workbook"] > budget
            and scale - GRID >= FLOOR - 1e-9
        ):
            scale = round(scale - GRID, 2)
        at = workbook_minutes(cfg, step, fwd, scale)["workbook"]
        verdict = (
            "fits unscaled"
            if scale == 1
            else f"step_scale {scale:g}: {at:.0f} min"
            + ("" if at <= budget else f", does not fit (the floor is {FLOOR:g})")
        )
        print(f"| {gpu} | {full['report']:.0f} | {full['workbook']:.0f} | {verdict} |")


if __name__ == "__main__":
    main()
