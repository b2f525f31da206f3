"""``python -m helpers doctor``: one screen that says what this machine will do before anything
long starts: the software, the GPU and the precision it will train in, the profile and why, the
data, the propagation backend and its self-check, and the training plan with its time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from types import SimpleNamespace

import torch

from ..core.config import default_profile, load_config
from ..core.runtime import autocast_dtype


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def gpu_lines(device: torch.device) -> list[str]:
    """The GPU, its memory and compute capability, the driver, and the autocast dtype."""
    if device.type != "cuda":
        return [
            "GPU: none (CUDA not available): training runs on the CPU",
            "autocast: none (mixed precision does not help on the CPU)",
        ]
    props = torch.cuda.get_device_properties(device)
    try:
        driver = str(torch._C._cuda_getDriverVersion())  # e.g. 12040 for 12.4
        driver = f"{int(driver) // 1000}.{int(driver) % 1000 // 10}"
    except (AttributeError, RuntimeError, ValueError):
        driver = "unknown"
    dtype = autocast_dtype(device)
    why = (
        "native on compute capability >= 8.0"
        if dtype == torch.bfloat16
        else "with a gradient scaler: this GPU only emulates bfloat16"
    )
    return [
        f"GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
        f"{props.major}.{props.minor}; CUDA {torch.version.cuda}, driver {driver}",
        f"autocast: {str(dtype).removeprefix('torch.')} ({why})",
    ]


def profile_line(profile: str | None) -> tuple[str, str]:
    """The profile that will be chosen, and why."""
    if profile:
        return profile, f"profile: {profile} (--profile)"
    if os.environ.get("WORKBOOK_PROFILE"):
        chosen = os.environ["WORKBOOK_PROFILE"]
        return chosen, f"profile: {chosen} (WORKBOOK_PROFILE)"
    chosen = default_profile()
    reason = "CUDA is available" if chosen == "full" else "no CUDA: the CPU profile"
    return chosen, f"profile: {chosen} (the default: {reason}; WORKBOOK_PROFILE chooses another)"


def backend_line(backend: str, device: torch.device) -> str:
    """The configured propagation backend, what it resolves to here, and the kernels' check."""
    from ..models.propagation import CSPN, base, selfcheck

    # what the backend choice reads of a tensor (its device and dtype), without allocating one
    probe = SimpleNamespace(device=device, dtype=torch.float32)
    try:
        ran = CSPN(1, backend=backend).backend_for(probe)
    except (RuntimeError, ValueError) as exc:  # e.g. triton asked for on the CPU
        return f"propagation: {backend} -> not possible here: {exc}"
    if ran == "triton":
        return f"propagation: {backend} -> fused Triton kernels (self-check passed on {device})"
    # the kernels were in question only where this edition has them, with Triton, on CUDA
    considered = (
        device.type == "cuda"
        and backend in ("auto", "triton")
        and base.HAS_FAST_PATH
        and base.HAS_KERNELS
        and importlib.util.find_spec("triton") is not None
    )
    problem = selfcheck.kernel_problem(str(device), str(probe.dtype)) if considered else None
    what = {
        "torch": "PyTorch path (custom autograd ring sums)",
        "plain": "plain steps (your own gather, ring sums and steps)",
    }[ran]
    if problem:
        return f"propagation: {backend} -> {what}: the kernels failed their self-check ({problem})"
    return f"propagation: {backend} -> {what}"


SESSION = 60  # minutes of the session a budget is suggested for (a Colab session's order)


def report(profile: str | None = None, data_root=None, plan: bool = True) -> list[str]:
    """Every line of the doctor's screen."""
    chosen, why = profile_line(profile)
    cfg = load_config(chosen)
    device = torch.device(cfg.device)
    lines = [
        f"Python {platform.python_version()} ({platform.machine()}, {platform.system()}); "
        f"torch {torch.__version__}; Triton {_version('triton')}",
        *gpu_lines(device),
        f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        why,
    ]
    if plan:
        from ..workbook.plan import plan_lines, suggested_budget
        from ..workbook.session import open_workbook

        wb = open_workbook(chosen, data_root, verbose=False)
        lines.append(wb.source.describe().replace("data source", "data", 1))
        lines.append(
            f"data: {len(wb.data['train'])} training, {len(wb.data['val'])} validation, "
            f"{len(wb.data['test'])} test images at {cfg.image_size} px"
        )
        lines.append(backend_line(cfg.propagation_backend, device))
        lines += plan_lines(wb)
        if wb.budget is None and wb.cfg.step_scale != 1:
            lines.append(f"budget: none; step_scale {wb.cfg.step_scale:g} (set by hand)")
        elif wb.budget is None and wb.pending_budget is None:
            lines.append(
                f"budget: none (the full schedule); a {SESSION} min session fits --budget "
                f"{suggested_budget(SESSION)} (WORKBOOK_BUDGET)"
            )
    else:
        lines.append(backend_line(cfg.propagation_backend, device))
    return lines


def colab_line(profile: str | None = None) -> str:
    """The one line the first notebook cell prints inside Colab: device, profile, backend."""
    chosen, _ = profile_line(profile)
    cfg = load_config(chosen)
    device = torch.device(cfg.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    backend = backend_line(cfg.propagation_backend, device).removeprefix("propagation: ")
    return f"workbook: {name}, profile {chosen}, propagation {backend}"


def doctor_command(args) -> int:
    for line in report(args.profile, args.data_root, plan=not args.no_plan):
        print(line)
    return 0
