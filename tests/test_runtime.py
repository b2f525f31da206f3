"""Process settings: freed memory is kept for reuse (helpers/runtime.py)."""

import os
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from helpers.core.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n = 64 * 2**20 // 4                # 64 MB: above glibc's largest mmap threshold (32 MB)
x = torch.ones(n); del x           # first use: the pages are new either way
# a slightly smaller block (a same-sized one may not fit the freed one: PyTorch's 64-byte
# alignment asks glibc for a few bytes more than the block it freed)
f0 = faults(); x = torch.ones(n - 2**18); s = float(x.sum()); del x
print(applied, faults() - f0, s)
"""


def run(mode):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True
    )
    applied, faults, total = out.stdout.split()
    return applied, int(faults), float(total)


GLIBC_DEFAULTS = (
    platform.system() == "Linux"
    and platform.libc_ver()[0] == "glibc"
    and "malloc" not in os.environ.get("LD_PRELOAD", "")  # jemalloc / tcmalloc
    and not any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ)
)


@pytest.mark.skipif(not GLIBC_DEFAULTS, reason="needs glibc's malloc with its default settings")
def test_freed_memory_is_reused_without_page_faults():
    """With glibc's defaults a freed 64 MB tensor is unmapped and the next large one page-faults
    in every one of its ~16,000 pages again; after keep_freed_memory() it reuses them.
    Each run is its own process (the setting is process-wide)."""
    _, default_faults, total = run("default")
    applied, kept_faults, kept_total = run("keep")
    assert applied == "True"
    assert default_faults > 10_000, "glibc unmapped the block, as expected without the setting"
    assert kept_faults < 100, f"the freed block was not reused: {kept_faults} page faults"
    assert kept_total == total == 64 * 2**20 // 4 - 2**18


def test_elsewhere_it_says_it_did_nothing(monkeypatch):
    from helpers.core import runtime

    def no_libc(*args):
        raise AssertionError("keep_freed_memory must not load libc off glibc")

    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(runtime.ctypes, "CDLL", no_libc)
    assert runtime.keep_freed_memory() is False


def _gpu(monkeypatch, native_bf16: bool):
    """A CUDA device simulated by its bfloat16 support: ``native_bf16`` False is a T4 (compute
    capability 7.5), which emulates bfloat16 (torch then says True unless asked without
    emulation); True an A100 or newer."""
    import torch

    def supported(including_emulation: bool = True) -> bool:
        return native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)


def test_autocast_picks_bfloat16_only_where_the_gpu_has_it_natively(monkeypatch):
    import torch

    from helpers.core.runtime import autocast_dtype

    assert autocast_dtype("cpu") is None
    _gpu(monkeypatch, native_bf16=False)
    assert torch.cuda.is_bf16_supported()  # what a T4 reports by default: the trap
    assert autocast_dtype("cuda") == torch.float16
    _gpu(monkeypatch, native_bf16=True)
    assert autocast_dtype("cuda") == torch.bfloat16


def test_float16_training_scales_its_loss_and_bfloat16_does_not(monkeypatch):
    """``fit`` builds its gradient scaler from the same choice (checked without a GPU: the scaler
    it would build, through the autocast dtype)."""
    import torch

    import helpers.training.loop as loop

    built = []

    class Scaler:
        def __init__(self, device, enabled):
            built.append(enabled)
            raise StopIteration  # nothing after the scaler matters here

    monkeypatch.setattr(loop.torch.amp, "GradScaler", Scaler)
    monkeypatch.setattr(loop, "limit_cpu_threads", lambda: 4)
    from toys import toy_data

    from helpers.models.coarse import CoarseSegmenter

    for native, scaled in ((False, True), (True, False)):
        _gpu(monkeypatch, native)
        monkeypatch.setattr(loop, "make_batches", lambda *a, **k: [(None, None)] * 2)
        model = CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)
        monkeypatch.setattr(model, "to", lambda device: model)
        try:
            loop.fit(
                model,
                train_set=toy_data(4),
                val_set=toy_data(2),
                epochs=1,
                lr=1e-3,
                batch_size=2,
                device=torch.device("cuda"),
                progress=False,
            )
        except StopIteration:
            pass
        assert built[-1] is scaled
