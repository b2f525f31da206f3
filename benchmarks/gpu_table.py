"""The `full` profile sized on paper for the GPUs students get (T4, L4, A100, H100).

Every aten operation of one training step (forward, backward, optimiser) and of one evaluation
forward pass of each model of the `full` profile is counted on the CPU: its FLOPs
(``torch.utils.flop_counter``'s formulas), the bytes it reads and writes (its tensors' sizes:
no fusion, every operand from memory) and one launch. Autocast runs as on a GPU (bfloat16; on
the CPU here), so convolutions move half-width operands and the casts are counted too.
Counted at batch 2 and scaled to the profile's batch 16 (every count is linear in the batch).

A step's time on a GPU is then modelled per operation: its roofline time at an efficiency,
but never less than the host's cost of issuing one eager operation (the GPU runs ahead of the
host only when its work per operation outlasts that cost):

    T = sum_i max(max(F_i / P_i, B_i / W) / e_i, L)

with P_i the GPU's dense tensor-core peak (bfloat16; float16 on a T4) for convolutions and
matrix products and its float32 peak otherwise, W its memory bandwidth, e_i = e_t for
convolutions and products, e_m = 0.5 (assumed) for the rest. e_t and L are fitted to two
H200 measurements of the PyTorch path (batch 16, 256 px): the no-propagation control (38 ms)
and DySPN before the kernels (70 ms). The method is checked against what it did not see: CSPN
on the PyTorch path (46 ms) and the five stages of the `full` chain on the real sample (4-34 s
each). The same e_t, e_m and L serve every GPU: an assumption (a Colab host's CPU is slower
than an H200 server's, so steps bound by L take longer there), stated with the table. CSPN and
DySPN are counted on the PyTorch path; where the fused kernels pass their self-check they are
faster (by 7% and 21% on the H200). The whole workbook's minutes then follow from the
registry's epochs on the whole dataset (2,944 training, 736 validation, 3,669 test images),
with an evaluation of the validation split after every epoch.

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
# measured on the H200 (docs/benchmarks.md#measured-on-the-h200): ms per training step, batch
# 16, 256 px; the PyTorch path (issue 24, before the kernels) and the fused kernels (2026-11-27)
H200_TORCH = {"control": 38.0, "cspn": 46.0, "dyspn": 70.0}
H200_KERNELS = {"control": 38.0, "cspn": 43.0, "dyspn": 55.0}
# the full chain of the report's setting on the real sample (132 / 38 / 123 images), seconds per
# stage, training and evaluation, the kernels on
H200_CHAIN = {"coarse": 4, "coarse-longer": 14, "control": 27, "cspn": 32, "dyspn": 34}
SENSITIVITY = 3  # a slower GPU's convolutions may reach a larger share of its smaller peak
MEMORY_EFFICIENCY = 0.5  # e_m: eager elementwise kernels reach about half the bandwidth
TENSOR_OPS = {"convolution", "convolution_backward", "mm", "addmm", "bmm", "baddbmm"}
# the whole dataset (official trainval 3,680, test 3,669) and the real sample (170, 123)
TRAINVAL, TEST = 3680, 3669
SAMPLE = (132, 38, 123)


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

    def seconds(self, gpu: str, tensor_efficiency: float, launch: float) -> float:
        """sum_i max(roofline_i / e_i, L) on ``gpu`` (see the module docstring)."""
        tensor_peak, fp32_peak, gbps = GPUS[gpu]
        total = 0.0
        for name, f, b in self.ops:
            tensor = name in TENSOR_OPS
            roof = max(f / ((tensor_peak if tensor else fp32_peak) * 1e12), b / (gbps * 1e9))
            total += max(roof / (tensor_efficiency if tensor else MEMORY_EFFICIENCY), launch)
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
    """The operations of one training step (:func:`helpers.training.loop.train_step`: forward,
    the stage's loss, backward, AdamW) or one evaluation forward, under bfloat16 autocast as
    training runs on a GPU."""
    from helpers.models.refiner import Refiner
    from helpers.training.loop import make_optimiser, train_step

    optimiser = make_optimiser(model, lr=1e-4)
    for group in optimiser.param_groups:  # AdamW's default on CUDA: one launch per op for all
        group["foreach"] = True
    loss_fn = model.training_loss if isinstance(model, Refiner) else None
    model.train(train)
    with OpCounter() as counter, torch.autocast("cpu", dtype=torch.bfloat16):
        if train:
            train_step(model, optimiser, images, targets, loss_fn=loss_fn)
        else:
            with torch.no_grad():
                model(images)
    return Counts(counter.ops)


def counted(cfg, batch: int) -> tuple[dict, dict]:
    """{model: Counts} of a training step and of an evaluation forward at ``cfg``'s batch and
    size (counted at ``batch``, scaled)."""
    torch.manual_seed(0)
    size, factor = cfg.image_size, cfg.batch_size / batch
    images = torch.rand(batch, 3, size, size)
    targets = (torch.rand(batch, size, size) > 0.5).long()
    train, forward = {}, {}
    for name, model in models(cfg).items():
        train[name] = count(model, images, targets, train=True).scaled(factor)
        forward[name] = count(model, images, targets, train=False).scaled(factor)
    return train, forward


def models(cfg):
    """The coarse U-Net (trained: its own copy) and the three refiners on a frozen one."""
    from helpers.models.coarse import CoarseSegmenter
    from helpers.models.refiner import Refiner

    frozen = CoarseSegmenter.from_config(cfg)
    out = {"coarse": CoarseSegmenter.from_config(cfg)}
    for method in ("control", "cspn", "dyspn"):
        out[method] = Refiner.from_config(cfg, frozen, method)
    return out


def fit(train: dict) -> tuple[float, float]:
    """(e_t, L): for each e_t on a grid of 0.01, the L that makes the control's modelled H200
    step its measured 38 ms (bisection); then the e_t whose DySPN step (PyTorch path) is
    closest to its measured 70 ms."""

    def launch_for(e_t: float) -> float:
        lo, hi = 0.0, H200_TORCH["control"] / 1e3 / len(train["control"].ops)
        for _ in range(50):
            mid = (lo + hi) / 2
            if train["control"].seconds("H200", e_t, mid) > H200_TORCH["control"] / 1e3:
                hi = mid
            else:
                lo = mid
        return lo

    fits = []
    for e_t in (k / 100 for k in range(1, 101)):
        launch = launch_for(e_t)
        dyspn = train["dyspn"].seconds("H200", e_t, launch) * 1e3
        fits.append((abs(dyspn / H200_TORCH["dyspn"] - 1), e_t, launch))
    _, e_t, launch = min(fits)
    return e_t, launch


def stage_epochs(cfg, n_train: int, scale: float = 1.0) -> dict:
    """Epochs of each trained stage of both settings at ``step_scale`` ``scale``, as the
    registry trains them on ``n_train`` training images (a stand-in for the workbook: the epochs
    read only its configuration and the training split's size)."""
    from types import SimpleNamespace

    from helpers.workbook import stages as registry

    wb = SimpleNamespace(cfg=cfg.replace(step_scale=scale), data={"train": range(n_train)})
    return {n: s.train_epochs(wb) for n, s in registry.REGISTRY.items() if s.trained}


def stage_seconds(
    cfg, step: dict, forward: dict, sizes, scale: float = 1.0, per_epoch: float = 0.0
) -> dict:
    """Seconds of each stage of both settings from per-model step and evaluation-forward
    seconds (batch ``cfg.batch_size``) on splits of ``sizes`` = (train, val, test) images, at
    ``step_scale`` ``scale``: every epoch trains, evaluates validation and costs ``per_epoch``
    more (the checkpoint, the metrics); the end evaluates validation and test; the guided filter
    evaluates a grid of 9 on validation."""
    from helpers.workbook import stages as registry

    n_train, n_val, n_test = sizes
    steps, val, test = (math.ceil(n / cfg.batch_size) for n in (n_train, n_val, n_test))
    epochs = stage_epochs(cfg, n_train, scale)

    out = {}
    for name, n in epochs.items():
        k = registry.get(name).method or "coarse"  # the model a step of it trains
        out[name] = n * (steps * step[k] + val * forward[k] + per_epoch) + (val + test) * forward[k]
    out["guided-filter"] = (9 * val + test) * forward["coarse"]
    return out


def minutes(per_stage: dict) -> dict:
    report = sum(v for k, v in per_stage.items() if not k.startswith("converged"))
    return {"report": report / 60, "workbook": sum(per_stage.values()) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2, help="counted at this batch, scaled")
    parser.add_argument("--session", type=float, default=60, help="minutes of a session")
    args = parser.parse_args()

    from helpers.core.config import profile_config
    from helpers.workbook.plan import FLOOR, GRID, suggested_budget

    cfg = profile_config("full", device="cpu", propagation_backend="torch")
    train, forward = counted(cfg, args.batch)
    print(
        f"full profile, batch {cfg.batch_size}, {cfg.image_size} px "
        f"(counted at batch {args.batch}):\n"
    )
    print("| model | training step: GFLOP | GB moved | operations | evaluation: GFLOP | GB |")
    print("|---|---|---|---|---|---|")
    for name in train:
        t, f = train[name], forward[name]
        print(
            f"| {name} | {t.flops / 1e9:.0f} | {t.bytes / 1e9:.1f} | {len(t.ops)} | "
            f"{f.flops / 1e9:.0f} | {f.bytes / 1e9:.1f} |"
        )
    e_t, launch = fit(train)
    print(
        f"\nfitted on the H200 (control 38 ms, DySPN 70 ms, PyTorch path): e_t = {e_t:.2f} of "
        f"the tensor peak, L = {launch * 1e6:.1f} us per operation; e_m = {MEMORY_EFFICIENCY} "
        "(assumed)"
    )
    print("\nthe H200, measured -> modelled:")
    for m in ("control", "cspn", "dyspn"):
        got = train[m].seconds("H200", e_t, launch) * 1e3
        print(
            f"  {m} step: PyTorch path {H200_TORCH[m]:.0f} ms -> {got:.1f} ms "
            f"({got / H200_TORCH[m] - 1:+.0%}; with the kernels {H200_KERNELS[m]:.0f} ms)"
        )
    step = {k: c.seconds("H200", e_t, launch) for k, c in train.items()}
    fwd = {k: c.seconds("H200", e_t, launch) for k, c in forward.items()}
    # what an epoch costs besides its steps and evaluation, from the chain's total
    chain = stage_seconds(cfg, step, fwd, SAMPLE)
    epochs = stage_epochs(cfg, SAMPLE[0])
    per_epoch = (sum(H200_CHAIN.values()) - sum(chain[n] for n in H200_CHAIN)) / sum(
        epochs[n] for n in H200_CHAIN
    )
    print(
        f"  the sample's chain, steps and evaluations only: {sum(chain[n] for n in H200_CHAIN):.0f}"
        f" s of the {sum(H200_CHAIN.values())} s measured: {per_epoch:.2f} s more per epoch "
        "(checkpoint, metrics), fitted"
    )
    chain = stage_seconds(cfg, step, fwd, SAMPLE, per_epoch=per_epoch)
    for name, measured in H200_CHAIN.items():
        print(
            f"  {name} on the sample: {measured} s -> {chain[name]:.1f} s "
            f"({chain[name] / measured - 1:+.0%})"
        )

    budget = suggested_budget(args.session)
    whole = (
        TRAINVAL - round(TRAINVAL * cfg.val_fraction),
        round(TRAINVAL * cfg.val_fraction),
        TEST,
    )
    small = profile_config("cpu", device="cpu", propagation_backend="torch")
    small_counts = counted(small, args.batch)
    print(
        f"\nthe whole dataset; cpu profile: its models at {small.image_size} px, batch "
        f"{small.batch_size}\n"
    )
    print(
        f"| GPU | full: report's setting, min | full: whole workbook, min | the same if "
        f"convolutions reach {SENSITIVITY}x e_t | full, `--budget {budget}` (a "
        f"{args.session:g}-minute session) | cpu profile: whole workbook, min |"
    )
    print("|---|---|---|---|---|---|")
    for gpu in GPUS:

        def workbook(e: float, scale: float = 1.0, profile=(cfg, train, forward)) -> dict:
            c, tr, fw = profile
            step = {k: x.seconds(gpu, e, launch) for k, x in tr.items()}
            fwd = {k: x.seconds(gpu, e, launch) for k, x in fw.items()}
            return minutes(stage_seconds(c, step, fwd, whole, scale, per_epoch))

        full, faster = workbook(e_t), workbook(min(1.0, SENSITIVITY * e_t))
        scale, at = 1.0, full["workbook"]
        while at > budget and scale - GRID >= FLOOR - 1e-9:
            scale = round(scale - GRID, 2)
            at = workbook(e_t, scale)["workbook"]
        verdict = (
            "fits unscaled"
            if scale == 1
            else f"step_scale {scale:g}: {at:.0f} min"
            if at <= budget
            else f"{scale:g} (the floor): {at:.0f} min, does not fit"
        )
        cpu = workbook(e_t, profile=(small, *small_counts))
        print(
            f"| {gpu} | {full['report']:.0f} | {full['workbook']:.0f} | "
            f"{faster['workbook']:.0f} | {verdict} | {cpu['workbook']:.0f} |"
        )


if __name__ == "__main__":
    main()
