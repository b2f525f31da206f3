"""Process settings for fast training: on the CPU freed memory is kept for reuse, not given
back; on a GPU the process's CPU threads are capped (:func:`limit_cpu_threads`).

A refiner's training step allocates and frees tensors of tens of megabytes: DySPN's 48 neighbour
weights of a batch of 16 at 128 px are 48 MB, and so is every gradient and intermediate of
them. glibc's ``malloc`` serves each block above 32 MB with a fresh ``mmap`` and unmaps it when
it is freed, so the next step's tensor of the same size starts as untouched pages: the kernel
zeroes and maps every 4 KB page again (a page fault each). On the 2-core machine that was about
half of a DySPN training step (``benchmarks/propagation.py --training``). Two ``mallopt``
settings keep freed blocks in the heap, where the next step reuses them:

* ``M_MMAP_MAX = 0``: no block is served by its own ``mmap`` (except where a thread's own
  arena cannot hold it; PyTorch allocates a step's tensors from the main thread);
* ``M_TRIM_THRESHOLD = 2 GiB``: free memory at the top of the heap is not handed back.

The cost: a process keeps the memory it has used at its peak until it exits (training does
anyway), so the workbook applies it on the CPU only; on CUDA host memory is not the bottleneck. The
arithmetic does not change: the same numbers, to the last bit.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Ask glibc's ``malloc`` to keep freed memory for reuse (see the module docstring).

    Returns True where the settings were applied (Linux with glibc: this machine, Colab), False
    where there is nothing to do (macOS, Windows, musl). Idempotent, cheap, and process-wide,
    like ``torch.set_num_threads``: :func:`helpers.training.loop.fit` and
    :func:`helpers.workbook.session.open_workbook` call it for CPU runs."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


# CPU threads of a process that trains on a GPU: its CPU work (batch indexing, the progress bar,
# small reductions) needs few. torch starts one thread per core, so two runs side by side on a
# 16-core GPU machine ran 32 busy-waiting threads and each was about 10x slower than alone
GPU_PROCESS_THREADS = 4


def limit_cpu_threads(threads: int = GPU_PROCESS_THREADS) -> int:
    """Cap torch's CPU threads at ``threads`` for a process whose work runs on a GPU; returns the
    count in use. An explicit ``OMP_NUM_THREADS`` is the user's choice and is left alone."""
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def in_colab() -> bool:
    """True inside a Colab runtime (its module is loaded, or its environment variable is set)."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The half precision mixed-precision training uses on ``device``: bfloat16 where the GPU
    computes it natively (compute capability 8.0 and up: A100, L4, H100), float16 with a
    gradient scaler elsewhere (a Colab T4, 7.5, only emulates bfloat16, and
    ``torch.cuda.is_bf16_supported()`` says True there unless asked without emulation); None on
    the CPU, where autocast does not help."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the keyword: bfloat16 is native from compute capability 8
        native = torch.cuda.get_device_capability(device) >= (8, 0)
    return torch.bfloat16 if native else torch.float16
