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
