"""Speed and memory of the propagation modules against the ``F.unfold`` reference.

Forward + backward of T iterations at batch 8, 2 classes, for CSPN (3x3) and DySPN (7x7), at
128x128 and 256x256. Each measurement runs in a fresh subprocess so that peak memory (CUDA: the
allocator's peak; CPU: the process's peak resident set above its state after building the
inputs) is not polluted by the others. Also printed: how close an iteration comes to the memory
bandwidth limit, as its time over the time of one plain copy of the bytes it must at least move
(read H^t, H^0 and the affinities, write H^{t+1}).

    python benchmarks/propagation.py                  # both sizes, both methods
    python benchmarks/propagation.py --sizes 128 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(method: str, impl: str, size: int, batch: int, iterations: int, repeats: int, device: str) -> dict:
    import resource

    import torch

    from helpers.propagation import CSPN, DySPN
    from helpers.propagation_reference import reference_cspn, reference_dyspn

    torch.manual_seed(0)
    dev = torch.device(device)
    K = 8 if method == "cspn" else 48
    h0 = torch.softmax(torch.randn(batch, 2, size, size, device=dev), 1)
    aff = torch.randn(batch, K, size, size, device=dev, requires_grad=True)
    att = torch.randn(batch, iterations * 4, size, size, device=dev, requires_grad=True)
    module = CSPN(iterations).to(dev) if method == "cspn" else DySPN(iterations).to(dev)

    def step():
        if impl == "ours":
            out = module(h0, aff).final if method == "cspn" else module(h0, aff, att).final
        else:
            out = reference_cspn(h0, aff, iterations)[-1] if method == "cspn" else \
                reference_dyspn(h0, aff, att, iterations)[-1]
        out.square().sum().backward()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

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
        if impl == "ours":
            module(h0, aff) if method == "cspn" else module(h0, aff, att)
        else:
            reference_cspn(h0, aff, iterations) if method == "cspn" else reference_dyspn(h0, aff, att, iterations)
    return {"seconds": min(times), "peak_bytes": max(peak, 0), "saved_bytes": sum(storages.values()),
            "copy_seconds": copy_s}


def run_isolated(args_ns, method, impl, size) -> dict:
    cmd = [sys.executable, __file__, "--child", method, impl, str(size), "--batch", str(args_ns.batch),
           "--iterations", str(args_ns.iterations), "--repeats", str(args_ns.repeats), "--device", args_ns.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", nargs=3, metavar=("METHOD", "IMPL", "SIZE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        method, impl, size = a.child
        print(json.dumps(measure(method, impl, int(size), a.batch, a.iterations, a.repeats, a.device)))
        return
    print(f"device {a.device} ({torch.get_num_threads()} threads), batch {a.batch}, 2 classes, "
          f"T = {a.iterations}, forward + backward, best of {a.repeats}")
    print(f"{'method':7s} {'size':>5s} {'ours ms':>9s} {'unfold ms':>10s} {'speed-up':>9s} "
          f"{'ours MB':>8s} {'unfold MB':>10s} {'peak ratio':>11s} {'saved ratio':>12s} {'iter / copy':>12s}")
    for size in a.sizes:
        for method in ("cspn", "dyspn"):
            ours = run_isolated(a, method, "ours", size)
            ref = run_isolated(a, method, "unfold", size)
            per_iter = ours["seconds"] / a.iterations
            print(f"{method:7s} {size:5d} {1e3 * ours['seconds']:9.1f} {1e3 * ref['seconds']:10.1f} "
                  f"{ref['seconds'] / ours['seconds']:8.1f}x {ours['peak_bytes'] / 2**20:8.1f} "
                  f"{ref['peak_bytes'] / 2**20:10.1f} {ours['peak_bytes'] / max(ref['peak_bytes'], 1):10.2f}x "
                  f"{ours['saved_bytes'] / ref['saved_bytes']:11.2f}x {per_iter / ours['copy_seconds']:11.1f}x", flush=True)
    print("speed-up: unfold time / ours; MB and peak ratio: peak memory above the inputs, ours / unfold;\n"
          "saved ratio: bytes autograd keeps for backward, ours / unfold (lower is better);\n"
          "iter / copy: one forward+backward iteration over one plain copy of the bytes it must move.")


if __name__ == "__main__":
    main()
