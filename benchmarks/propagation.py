"""Speed and memory of the propagation, every implementation side by side in one run.

Forward + backward of T iterations at batch 8, 2 classes, for CSPN (3x3) and DySPN (7x7), at
128x128 and 256x256, of:

* ``torch``: this workbook's PyTorch path (``backend="torch"``, the CPU default);
* ``triton``: its fused Triton kernels (``backend="triton"``, the CUDA default; CUDA only);
* ``plain``: the propagators' readable steps (``backend="plain"``: the gather and ring sums of
  :mod:`helpers.models.propagation.neighbours`, what the student edition trains with);
* ``unfold``: the slow reference (``F.unfold``, one copy of the map per neighbour);
* ``grouped``: the same update with the neighbours gathered by a grouped convolution with
  one-hot filters, the fast way to write it in plain PyTorch (written for this benchmark).

Each measurement runs in a fresh subprocess so that peak memory (CUDA: the allocator's peak;
CPU: the process's peak resident set above its state after building the inputs) is not polluted
by the others; each keeps freed memory for reuse as the workbook does (:mod:`helpers.core.runtime`).
Also printed: how close an iteration comes to the memory-bandwidth bound, as its time over the time
of one plain copy of the bytes it must at least move (read H^t, H^0 and the affinities, write
H^{t+1}), and each implementation's speed-up over the grouped convolution.

    python benchmarks/propagation.py                  # both sizes, both methods
    python benchmarks/propagation.py --sizes 128 --repeats 3
    # where the time goes (torch.profiler), 256 px
    python benchmarks/propagation.py --breakdown dyspn triton

``--training`` times whole refiner training steps instead (guidance U-Net, propagation, loss,
AdamW; the models of ``--profile``: ``cpu`` at 128 px on the CPU, ``full`` at 256 px with bf16
autocast on CUDA; batch 16 unless ``--batch`` / ``--sizes`` say otherwise), for the
no-propagation control, CSPN and DySPN, each in its own process; on the CPU each with glibc's
default allocator and with :func:`helpers.core.runtime.keep_freed_memory` (which the workbook uses):
the DySPN / CSPN ratio and what keeping freed memory buys, side by side.

    python benchmarks/propagation.py --training
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def problem(method: str, impl: str, size: int, batch: int, iterations: int, device: str):
    """One propagation problem: random inputs on ``device`` and ``step()``, one forward +
    backward of ``impl``; returns (forward, step, sync, inputs with gradients, K)."""
    import torch

    from helpers.core.runtime import keep_freed_memory
    from helpers.models.propagation.propagators import CSPN, DySPN
    from helpers.models.propagation.reference import reference_cspn, reference_dyspn

    keep_freed_memory()  # as the workbook runs, for every implementation alike
    torch.manual_seed(0)
    dev = torch.device(device)
    K = 8 if method == "cspn" else 48
    h0 = torch.softmax(torch.randn(batch, 2, size, size, device=dev), 1)
    aff = torch.randn(batch, K, size, size, device=dev, requires_grad=True)
    att = torch.randn(batch, iterations * 4, size, size, device=dev, requires_grad=True)
    backend = impl if impl in ("plain", "torch", "triton") else "torch"
    module = (
        CSPN(iterations, backend=backend).to(dev)
        if method == "cspn"
        else DySPN(iterations, backend=backend).to(dev)
    )
    gather = grouped_neighbours if impl == "grouped" else None

    def forward():
        if impl in ("plain", "torch", "triton"):
            return module(h0, aff) if method == "cspn" else module(h0, aff, att)
        return (
            reference_cspn(h0, aff, iterations, gather)
            if method == "cspn"
            else reference_dyspn(h0, aff, att, iterations, neighbours=gather)
        )

    def step():
        out = forward()
        (out.final if hasattr(out, "final") else out[-1]).square().sum().backward()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return forward, step, sync, (aff, att), K


def measure(
    method: str, impl: str, size: int, batch: int, iterations: int, repeats: int, device: str
) -> dict:
    import resource

    import torch

    forward, step, sync, (aff, att), K = problem(method, impl, size, batch, iterations, device)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # a high-water mark: taken before the first step, it includes the inputs only
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        aff.grad = att.grad = None
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    # the bytes an iteration must at least move, and the time of one plain copy of that many
    must_move = 4 * batch * size * size * (2 * 3 + K + (4 if method == "dyspn" else 0))
    buf = torch.empty(must_move // 4, device=dev)
    sync()
    t0 = time.perf_counter()
    for _ in range(10):
        buf.clone()
    sync()
    copy_s = (time.perf_counter() - t0) / 10
    # what autograd keeps for the backward pass (distinct storages): the memory that grows with T
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return {
        "seconds": min(times),
        "peak_bytes": max(peak, 0),
        "saved_bytes": sum(storages.values()),
        "copy_seconds": copy_s,
    }


def measure_training(
    method: str, allocator: str, size: int, batch: int, repeats: int, device: str, profile: str
) -> dict:
    """Seconds of one refiner training step (best of ``repeats`` after a warm-up), a child
    process."""
    import torch

    from helpers.core.config import profile_config
    from helpers.core.runtime import keep_freed_memory
    from helpers.models.coarse import CoarseSegmenter
    from helpers.models.refiner import Refiner
    from helpers.workbook.timing import step_seconds

    applied = keep_freed_memory() if allocator == "keep" else False
    torch.manual_seed(0)
    cfg = profile_config(profile, image_size=size, device=device)
    dev = torch.device(device)
    images = torch.rand(batch, 3, size, size, device=dev)
    targets = (torch.rand(batch, size, size, device=dev) > 0.5).long()
    model = Refiner.from_config(cfg, CoarseSegmenter.from_config(cfg), method).to(dev)
    seconds = step_seconds(
        model, images, targets, steps=repeats + 1, amp=cfg.amp and dev.type == "cuda"
    )
    return {"seconds": seconds, "applied": applied}


def training_table(a) -> None:
    """Refiner training steps: control, CSPN, DySPN x default / kept allocator, side by side."""
    import platform

    size = a.sizes[0]
    batch = a.batch_given or 16
    where = (
        torch_device_name(a.device)
        if a.device.startswith("cuda")
        else f"{platform.machine()}, {__import__('os').cpu_count()} cores"
    )
    print(
        f"refiner training step, {a.device} ({where}), {a.profile}-profile models, batch {batch}, "
        f"{size} px, "
        f"best of {a.repeats} after a warm-up"
    )
    print(
        f"{'method':8s} {'allocator':10s} {'s / step':>9s} {'vs CSPN':>8s} {'kept vs default':>16s}"
    )
    rows = {}
    # glibc's allocator only matters for CPU tensors: on CUDA only the workbook's setting is timed
    for allocator in ("default", "keep") if a.device == "cpu" else ("keep",):
        # CSPN first: the others' times are given relative to it
        for method in ("cspn", "dyspn", "control"):
            cmd = [
                sys.executable,
                __file__,
                "--child-training",
                method,
                allocator,
                str(size),
                "--batch",
                str(batch),
                "--repeats",
                str(a.repeats),
                "--device",
                a.device,
                "--profile",
                a.profile,
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {method} / {allocator} measurement failed:\n{out.stderr}")
            rows[method, allocator] = r = json.loads(out.stdout.strip().splitlines()[-1])
            if allocator == "keep" and method == "cspn" and not r["applied"]:
                print(
                    "(keep_freed_memory does nothing on this platform: the two allocator rows are "
                    "the same setting)"
                )
            speedup = (
                f"{rows[method, 'default']['seconds'] / r['seconds']:15.2f}x"
                if ("default" != allocator and (method, "default") in rows)
                else ""
            )
            ratio = r["seconds"] / rows["cspn", allocator]["seconds"]
            print(
                f"{method:8s} {allocator:10s} {r['seconds']:9.3f} {ratio:7.2f}x {speedup}",
                flush=True,
            )
    print(
        "vs CSPN: this step over the CSPN step with the same allocator (the issue's targets: "
        "DySPN <= 1.5x on the CPU, <= 1.3x on a GPU);\n"
        "kept vs default: the default allocator's step time over the kept one's (higher: keeping "
        "freed memory pays)."
    )


def breakdown(
    method: str, impl: str, size: int, batch: int, iterations: int, device: str, rows: int = 15
) -> None:
    """Where one forward + backward goes: torch.profiler's operators and kernels of 3 steps after
    3 warm-ups, sorted by time on the device (CUDA) or the CPU, as a table."""
    from torch.profiler import ProfilerActivity, profile

    _, step, sync, _, _ = problem(method, impl, size, batch, iterations, device)
    for _ in range(3):
        step()
    sync()
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync()
    print(
        f"{method} {impl} {size} px, batch {batch}, T = {iterations}, {device}: 3 steps of "
        "forward + backward"
    )
    print(
        prof.key_averages().table(
            sort_by="cuda_time_total" if cuda else "cpu_time_total",
            row_limit=rows,
            max_name_column_width=60,
        )
    )


def torch_device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def grouped_neighbours(x, kernel):
    """(B, C, H, W) -> (B, C, K, H, W): every neighbour of the window (an int size or a dilated
    ``Window``; centre left out, in ``window_offsets`` order) by one grouped convolution with
    one-hot filters as wide as the farthest neighbour."""
    import torch
    import torch.nn.functional as F

    from helpers.models.propagation.geometry import window_offsets, window_reach

    B, C, H, W = x.shape
    r = window_reach(kernel)
    offsets = window_offsets(kernel)
    onehot = torch.zeros(len(offsets), 1, 2 * r + 1, 2 * r + 1, device=x.device, dtype=x.dtype)
    for j, (dy, dx) in enumerate(offsets):
        onehot[j, 0, r + dy, r + dx] = 1.0
    out = F.conv2d(x.reshape(B * C, 1, H, W), onehot, padding=r)
    return out.view(B, C, len(offsets), H, W)


def run_isolated(args_ns, method, impl, size) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        impl,
        str(size),
        "--batch",
        str(args_ns.batch),
        "--iterations",
        str(args_ns.iterations),
        "--repeats",
        str(args_ns.repeats),
        "--device",
        args_ns.device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument(
        "--batch", type=int, default=None, help="default: 8 (propagation), 16 (--training)"
    )
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--training", action="store_true", help="time refiner training steps (see above)"
    )
    p.add_argument(
        "--breakdown",
        nargs=2,
        metavar=("METHOD", "IMPL"),
        help="profile one implementation instead (e.g. dyspn triton) at the first size: where the "
        "time goes",
    )
    p.add_argument(
        "--profile",
        choices=("smoke", "cpu", "full"),
        default=None,
        help="--training: whose models (default: full on CUDA, else cpu)",
    )
    p.add_argument("--child", nargs=3, metavar=("METHOD", "IMPL", "SIZE"), help=argparse.SUPPRESS)
    p.add_argument(
        "--child-training", nargs=3, metavar=("METHOD", "ALLOCATOR", "SIZE"), help=argparse.SUPPRESS
    )
    a = p.parse_args()
    a.batch_given, a.batch = a.batch, a.batch or 8
    a.profile = a.profile or ("full" if a.device.startswith("cuda") else "cpu")
    if a.breakdown:
        breakdown(
            *a.breakdown,
            a.sizes[-1] if a.sizes == [128, 256] else a.sizes[0],
            a.batch,
            a.iterations,
            a.device,
        )
        return
    if a.child_training:
        method, allocator, size = a.child_training
        print(
            json.dumps(
                measure_training(
                    method, allocator, int(size), a.batch, a.repeats, a.device, a.profile
                )
            )
        )
        return
    if a.training:
        if a.sizes == [128, 256]:
            a.sizes = [256 if a.profile == "full" else 128]
        training_table(a)
        return
    if a.child:
        method, impl, size = a.child
        print(
            json.dumps(measure(method, impl, int(size), a.batch, a.iterations, a.repeats, a.device))
        )
        return
    impls = ["torch"] + (["triton"] if a.device.startswith("cuda") else [])
    impls += ["plain", "unfold", "grouped"]
    cuda = a.device.startswith("cuda")
    where = torch.cuda.get_device_name(0) if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"device {a.device} "
        f"({where}), "
        f"batch {a.batch}, 2 classes, T = {a.iterations}, forward + backward, best of {a.repeats}"
    )
    print(
        f"{'method':7s} {'size':>5s} {'impl':8s} {'ms':>9s} {'vs grouped':>11s} {'peak MB':>9s} "
        f"{'saved MB':>9s} "
        f"{'iter / copy':>12s}"
    )
    for size in a.sizes:
        for method in ("cspn", "dyspn"):
            rows = {impl: run_isolated(a, method, impl, size) for impl in impls}
            for impl, r in rows.items():
                per_iter = r["seconds"] / a.iterations
                print(
                    f"{method:7s} {size:5d} {impl:8s} {1e3 * r['seconds']:9.1f} "
                    f"{rows['grouped']['seconds'] / r['seconds']:10.1f}x "
                    f"{r['peak_bytes'] / 2**20:9.1f} "
                    f"{r['saved_bytes'] / 2**20:9.1f} {per_iter / r['copy_seconds']:11.1f}x",
                    flush=True,
                )
    print(
        "vs grouped: the grouped-convolution time over this one (higher is faster); peak MB: peak "
        "memory\n"
        "above the inputs; saved MB: what autograd keeps for the backward pass; iter / copy: one\n"
        "forward+backward iteration over one plain copy of the bytes it must move (1x = the "
        "bandwidth bound)."
    )


if __name__ == "__main__":
    main()
