"""One typed configuration object per workbook run, and the named profiles.

A profile is chosen with ``WORKBOOK_PROFILE`` (``smoke`` / ``cpu`` / ``full``); the seed with
``WORKBOOK_SEED``; the data folder with ``PETS_ROOT``. Nothing here reads the environment at
import time: :func:`load_config` does, when a notebook or the CLI asks for it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

PROFILES = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Frozen: derive variants with :meth:`replace`."""

    profile: str = "cpu"
    seed: int = 0
    device: str = "cpu"  # "cpu" or "cuda"; taken from torch by load_config
    # data
    image_size: int = 128  # side of the square the images are resized to
    # blobby by design; 64 px, not 32 (32: worse, no easier to refine); docs/tuning.md#coarse_size
    coarse_size: int = 64
    val_fraction: float = 0.2  # carved from trainval, deterministic by image id
    max_train: int | None = None  # cap on train images (None: all)
    max_eval: int | None = None  # cap on val / test images
    synthetic_trainval: int = 480  # size of the embedded synthetic dataset
    synthetic_test: int = 120
    pets_root: str | None = None  # has oxford-iiit-pet/ (PETS_ROOT); None: data/, synthetic
    download: bool = False  # torchvision may download (Colab, WORKBOOK_DOWNLOAD=1)
    allow_split_overlap: bool = False  # else an id in trainval.txt and test.txt is an error
    augment: bool = True  # joint flips / crops of image and mask while training
    num_workers: int = 0
    # models
    coarse_width: int = 16  # base width of the coarse U-Net
    coarse_depth: int = 4  # number of down-sampling steps
    # guidance U-Net width 16, not 8: no stage worse, CSPN better; docs/tuning.md#refiner_width
    refiner_width: int = 16
    # 4, not 5: a deeper guidance U-Net tied or lost, and is slower; docs/tuning.md#refiner_depth
    refiner_depth: int = 4
    # training
    batch_size: int = 16
    coarse_epochs: int = 3  # the report's "minimally trained" U-Net
    refine_epochs: int = 12
    # an epoch of a few dozen images is not an epoch of thousands: small training sets get more
    # epochs, so that every model sees at least this many optimiser steps
    coarse_min_steps: int = 72
    # 288, not 576: twice the time, no propagator above the control; docs/tuning.md#refine_min_steps
    refine_min_steps: int = 288
    coarse_lr: float = 2e-3
    # 1e-3, not 2e-3 (DySPN and the control worse) or 5e-4 (DySPN worse); docs/tuning.md#refine_lr
    refine_lr: float = 1e-3
    # the "converged" setting: the coarse U-Net trained on one cycle over converged_max_epochs,
    # keeping the epoch whose validation mIoU averaged over converged_window epochs is best;
    # converged_patience > 0 stops once that average has not improved for so many epochs (0:
    # never, the cycle anneals to its end): docs/tuning.md#converged_schedule
    converged_max_epochs: int = 60
    converged_window: int = 5
    converged_patience: int = 0
    # share of the refiners' and the converged net's epochs trained (the coarse U-Net keeps the
    # report's): 1 trains the full schedule; --budget / WORKBOOK_BUDGET choose a smaller one so
    # that the plan fits, never below helpers.workbook.plan.FLOOR
    # (docs/running.md#the-budget-fitting-a-session)
    step_scale: float = 1.0
    weight_decay: float = 1e-4
    # propagation
    iterations: int = 6  # T, the report's: docs/tuning.md#iterations
    dyspn_kernel: int = 7  # 7x7 window: rings of 8, 16, 24 neighbours
    # d: DySPN's rings 2, 3 at 2d, 3d; 1, not 2: d = 2 cost DySPN; docs/tuning.md#dyspn_dilation
    dyspn_dilation: int = 1
    # H^0: "corrected" (NLSPN-style) or "coarse"; corrected pays in both: docs/tuning.md#start_map
    start_map: str = "corrected"  # refining the report's minimally trained coarse U-Net
    converged_start_map: str = "corrected"  # refining the converged U-Net
    # "auto": fused Triton kernels on CUDA, the custom autograd path elsewhere; "plain" runs the
    # readable steps (the exercises' code; slower, K neighbour copies per iteration); "torch" /
    # "triton" force one (the same numbers each way, to float32 rounding: not part of a
    # checkpoint's identity)
    propagation_backend: str = "auto"
    # refiner training (helpers/models/perturb.py, helpers/models/losses.py)
    # share of start maps degraded (CascadePSP-style); 0.5, not 0 or 1: docs/tuning.md#perturb
    perturb: float = 0.5
    # share of start maps from the degraded ground truth; 0: it hurt; docs/tuning.md#perturb_truth
    perturb_truth: float = 0.0
    deep_supervision: bool = True  # every H^t supervised: docs/tuning.md#deep_supervision
    # loss weight of the target's boundary band; 4, not 1 or 10: docs/tuning.md#boundary_weight
    boundary_weight: float = 4.0
    # train a copy of the base net too; off: propagation then adds nothing; docs/tuning.md#tune_base
    tune_base: bool = False
    # NLSPN's per-pixel confidence; off: it cost DySPN, helped none; docs/tuning.md#confidence
    confidence: bool = False
    # gain g of CSPN's head: 4 pays on the coarse net, 1 on the converged; docs/tuning.md#cspn_gain
    cspn_gain: float = 4.0  # refining the report's minimally trained coarse U-Net
    converged_cspn_gain: float = 1.0  # refining the converged U-Net
    # guidance U-Net from "scratch" or the "base" net's weights: base; docs/tuning.md#guidance_init
    guidance_init: str = "base"  # refining the report's minimally trained coarse U-Net
    converged_guidance_init: str = "base"  # refining the converged U-Net
    # rate factor of the layers copied from the base net; 1, not 0.25: docs/tuning.md#warm_lr_factor
    warm_lr_factor: float = 1.0
    # loss weight of a corrected H^0; 0, not 1: 1 cost DySPN; docs/tuning.md#start_weight
    start_weight: float = 0.0
    amp: bool = True  # autocast, used only on CUDA

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def __post_init__(self):
        if not 0 < self.step_scale <= 1:
            raise ValueError(
                f"step_scale must be in (0, 1] (the share of the epochs trained), got "
                f"{self.step_scale}"
            )

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PROFILE_SETTINGS: dict[str, dict] = {
    # tests: tiny data, a notebook in seconds (refine_lr 2e-3: a refiner gets 1 epoch of 6 steps)
    "smoke": dict(
        image_size=48,
        coarse_size=32,
        synthetic_trainval=40,
        synthetic_test=12,
        max_train=24,
        max_eval=12,
        coarse_min_steps=0,
        refine_min_steps=0,
        coarse_width=8,
        coarse_depth=2,
        refiner_width=8,
        refiner_depth=2,
        batch_size=4,
        coarse_epochs=4,
        coarse_lr=1e-2,
        refine_epochs=1,
        refine_lr=2e-3,
        iterations=6,
        converged_max_epochs=8,
        converged_window=2,
        converged_patience=0,
    ),
    # the default without a GPU: real learning at 128 px, the whole workbook in about 45 minutes
    "cpu": dict(),
    # the default with CUDA: the report's settings
    "full": dict(
        image_size=256,
        coarse_size=64,
        synthetic_trainval=2000,
        synthetic_test=400,
        coarse_width=32,
        refiner_width=32,
        batch_size=16,
        coarse_epochs=3,
        refine_epochs=40,
        num_workers=2,
    ),
}


def profile_config(profile: str, **overrides) -> Config:
    """The configuration of a named profile, with explicit overrides."""
    if profile not in _PROFILE_SETTINGS:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return Config(profile=profile, **{**_PROFILE_SETTINGS[profile], **overrides})


# fields that describe the machine and the data's whereabouts, not a setting of the run
_CIRCUMSTANCES = ("device", "pets_root", "download")


def changed_settings(cfg: Config) -> dict:
    """The fields of ``cfg`` that differ from its profile's defaults (what ``--set`` changed):
    passing them back as ``--set`` reproduces the run."""
    default = profile_config(cfg.profile, seed=cfg.seed).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in _CIRCUMSTANCES and v != default[k]}


def parse_overrides(pairs: list[str]) -> dict:
    """``["coarse_size=64", "refine_lr=1e-3", "start_map=corrected"]`` -> typed overrides.

    Each value is converted to the type of the :class:`Config` field it sets (``none`` for an
    optional cap); an unknown field or a value of the wrong type is a clear error.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    settable = [name for name in fields if name not in ("profile", "seed")]
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if key in ("profile", "seed"):
            raise ValueError(
                f"{key} has its own option (--{key}); it cannot be set with FIELD=VALUE"
            )
        if not sep or key not in fields:
            raise ValueError(
                f"expected FIELD=VALUE with FIELD one of {', '.join(settable)}; got {pair!r}"
            )
        kind = str(fields[key].type)
        raw = raw.strip()
        try:
            if raw.lower() == "none" and "None" in kind:
                out[key] = None
            elif kind.startswith("bool"):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = raw.lower() in ("true", "1")
            elif kind.startswith("int"):
                out[key] = int(raw)
            elif kind.startswith("float"):
                out[key] = float(raw)
            else:
                out[key] = raw
        except ValueError:
            raise ValueError(f"{key} takes a value of type {kind}, got {raw!r}") from None
    return out


def default_profile() -> str:
    """``full`` where CUDA is available, else ``cpu``."""
    import torch

    return "full" if torch.cuda.is_available() else "cpu"


def check_settings(profile: str, seed) -> tuple[str, int]:
    """The profile and the seed (an int or the text of ``WORKBOOK_SEED``), checked, with messages
    that name the variable: the runner calls this before any notebook starts (inside a kernel a
    bad value would fail late, in another library's words), :func:`load_config` on every call."""
    if profile not in PROFILES:
        raise ValueError(
            f"WORKBOOK_PROFILE={profile!r} is not a profile: use one of {', '.join(PROFILES)}"
        )
    try:
        value = int(seed)
    except ValueError:
        raise ValueError(
            f"WORKBOOK_SEED={seed!r} is not an integer (use e.g. WORKBOOK_SEED=0)"
        ) from None
    if not 0 <= value < 2**32:
        raise ValueError(f"WORKBOOK_SEED={value} is outside 0 .. 2**32 - 1 (NumPy's seed range)")
    return profile, value


def load_config(profile: str | None = None, seed: int | None = None, **overrides) -> Config:
    """Build the run's configuration from arguments, then the environment, then defaults.

    The run's settings in the environment are read here, and only here (never at import):
    ``WORKBOOK_PROFILE``, ``WORKBOOK_SEED``, ``PETS_ROOT``, ``WORKBOOK_DOWNLOAD`` (a download
    is also allowed on Colab) and ``WORKBOOK_SET`` (``FIELD=VALUE`` pairs separated by spaces,
    as ``python -m helpers run --set`` passes them to the notebooks; explicit ``overrides`` win).
    """
    import torch

    from .runtime import in_colab

    profile, seed = check_settings(
        profile or os.environ.get("WORKBOOK_PROFILE") or default_profile(),
        seed if seed is not None else os.environ.get("WORKBOOK_SEED", "0"),
    )
    if os.environ.get("WORKBOOK_SET", "").strip():
        try:
            from_env = parse_overrides(os.environ["WORKBOOK_SET"].split())
        except ValueError as exc:
            raise ValueError(f"WORKBOOK_SET: {exc}") from None
        overrides = {**from_env, **overrides}
    overrides.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    overrides.setdefault("pets_root", os.environ.get("PETS_ROOT"))
    overrides.setdefault("download", in_colab() or os.environ.get("WORKBOOK_DOWNLOAD") == "1")
    return profile_config(profile, seed=seed, **overrides)


def parse_budget(text: str | float | None, what: str = "WORKBOOK_BUDGET") -> float | None:
    """Minutes of a budget from ``--budget`` or ``WORKBOOK_BUDGET``: None when unset (empty or
    ``none``); a clear error naming ``what`` for anything but a positive number."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return None
    try:
        minutes = float(text)
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"{what}={text!r} is not a positive number of minutes (e.g. {what}=45)")
    return minutes


def budget_minutes() -> float | None:
    """The training budget of the run in minutes, from ``WORKBOOK_BUDGET`` (None: unset), as
    ``python -m helpers run --budget`` passes it to the notebooks
    (:func:`helpers.workbook.plan.apply_budget` makes the training fit it)."""
    return parse_budget(os.environ.get("WORKBOOK_BUDGET"))
