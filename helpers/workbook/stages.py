"""The stage registry: every stage of the workbook declared once.

A *stage* is one model of the comparison (or the training-free filter): what it is called and
labelled, what it is built from, which stage it trains on top of, its epochs and learning rate,
and the spec that identifies its checkpoint. Everything else reads this table: training
(:func:`helpers.workbook.workflow.run_stage`), checkpoint names, the time estimate
(:mod:`helpers.workbook.timing`), the comparison table and ``results.json``
(:mod:`helpers.workbook.results`), the notebooks and the benchmarks. Adding a stage is one entry in
:func:`_declare`.

The two settings of the comparison are two *bases*: refine the report's minimally trained
coarse U-Net (``coarse``), or a coarse U-Net trained to convergence (``converged``: one cycle
over ``converged_max_epochs``, the epoch of the best averaged validation mIoU kept). On each
base sit the equal-compute control (the base trained on), the no-propagation control and the two
refiners.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch.nn as nn

from ..core.config import Config
from ..models.refiner import METHODS, CoarseSegmenter, Refiner, supervises_start
from ..training.loop import Convergence

if TYPE_CHECKING:
    from .session import Workbook

BASES = ("coarse", "converged")
KINDS = ("base", "longer", "refiner", "filter")


def epochs_for(
    epochs: int, min_steps: int, n_train: int, batch_size: int, what: str | None = None
) -> int:
    """``epochs``, raised where needed so that training takes at least ``min_steps`` optimiser
    steps: an epoch of a few dozen images is not an epoch of thousands. Says so when it acts."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    needed = max(epochs, math.ceil(min_steps / steps_per_epoch))
    if needed > epochs and what:
        print(
            f"{what}: {n_train} training images make {steps_per_epoch} steps per epoch; "
            f"training {needed} epochs instead of {epochs} to reach {min_steps} steps"
        )
    return needed


def scaled(epochs: int, scale: float) -> int:
    """``epochs`` times the budget's ``step_scale``, rounded half up, at least 1."""
    return max(1, math.floor(epochs * scale + 0.5)) if scale != 1 else epochs


@dataclass(frozen=True)
class Stage:
    """One stage. ``kind``: ``base`` (a U-Net trained from scratch), ``longer`` (its base trained
    on for a refiner's budget), ``refiner`` (control / cspn / dyspn on its base, frozen unless
    ``tune_base``) or
    ``filter`` (the guided filter on the coarse map, nothing trained). ``start`` and ``epochs``
    are a refiner's variants (None: the configuration's); so is ``init_from``, the name of a
    registered refiner of the same base (the no-propagation control) whose trained guidance
    U-Net this one starts from (:func:`helpers.models.guidance.init_from_refiner`)."""

    name: str
    label: str
    kind: str
    base: str = "coarse"
    method: str | None = None
    start: str | None = None
    epochs: int | None = None
    init_from: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {self.base!r}")
        if (self.kind == "refiner") != (self.method in METHODS):
            raise ValueError(
                f"a refiner stage needs a method of {METHODS}; got kind {self.kind!r}, method "
                f"{self.method!r}"
            )
        if self.init_from is not None and (
            self.kind != "refiner"
            or get(self.init_from).kind != "refiner"
            or get(self.init_from).base != self.base
        ):
            raise ValueError(
                f"{self.name!r}: init_from must name a refiner of the same base, got "
                f"{self.init_from!r}"
            )

    @property
    def trains_on(self) -> str | None:
        """The stage this one is built on (its base net), or None for a base net."""
        return None if self.kind == "base" else self.base

    @property
    def trained(self) -> bool:
        return self.kind != "filter"

    @property
    def scaled_by_budget(self) -> bool:
        """Whether ``step_scale`` changes its epochs: all but the coarse net and the filter."""
        return self.kind in ("refiner", "longer") or (self.kind, self.base) == ("base", "converged")

    # -------------------------------------------------------------------------- training budget
    def base_epochs(self, wb: "Workbook", verbose: bool = False) -> int:
        """Epochs of the base net: the profile's (raised for small training sets), or for the
        converged net the cap of its schedule (times ``step_scale``; the coarse net's are the
        report's and never scaled)."""
        c = wb.cfg
        epochs = epochs_for(
            c.coarse_epochs,
            c.coarse_min_steps,
            len(wb.data["train"]),
            c.batch_size,
            "coarse U-Net" if verbose and self.base == "coarse" else None,
        )
        if self.base == "converged":
            return max(epochs, scaled(c.converged_max_epochs, c.step_scale))
        return epochs

    def train_epochs(self, wb: "Workbook", verbose: bool = False) -> int:
        """Epochs this stage trains: its base's for a base net; a refiner's budget (the profile's
        ``refine_epochs``, raised for small training sets, times ``step_scale``) for the
        controls and refiners; a variant's own ``epochs`` as given."""
        if self.kind == "base":
            return self.base_epochs(wb, verbose)
        if self.epochs is not None:
            return self.epochs
        c = wb.cfg
        epochs = epochs_for(
            c.refine_epochs,
            c.refine_min_steps,
            len(wb.data["train"]),
            c.batch_size,
            f"{self.name} refiner" if verbose and self.kind == "refiner" else None,
        )
        return scaled(epochs, c.step_scale)

    def lr(self, cfg: Config) -> float:
        return cfg.refine_lr if self.kind == "refiner" else cfg.coarse_lr

    def convergence(self, cfg: Config) -> Convergence | None:
        """Training to convergence (the converged net only): its averaged validation score and
        stopping rule (:class:`~helpers.training.loop.Convergence`)."""
        if self.kind == "base" and self.base == "converged":
            return Convergence(cfg.converged_window, cfg.converged_patience or None)
        return None

    # -------------------------------------------------------------------------- identity
    def spec(self, wb: "Workbook") -> dict:
        """What identifies a trained model of this stage: the data, the settings that change the
        weights, and (for controls and refiners) the base net's own spec. Never reordered or
        renamed: a checkpoint is found by the hash of this dict."""
        c = wb.cfg
        base = {
            "stage": "coarse",
            "data": wb.data_id,
            "image_size": c.image_size,
            "coarse_size": c.coarse_size,
            "width": c.coarse_width,
            "depth": c.coarse_depth,
            "epochs": self.base_epochs(wb),
            "lr": c.coarse_lr,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "n_train": len(wb.data["train"]),
        }
        if self.base == "converged":
            # one cycle over the cap, the best averaged epoch kept (December 2026): a new key, so
            # a net of the old plateau schedule (patience on single epochs) is never reused
            base.update(
                stage="converged",
                schedule="one-cycle, averaged",
                window=c.converged_window,
                patience=c.converged_patience,
            )
        if self.kind in ("base", "filter"):
            return base
        if self.kind == "longer":
            return {**base, "stage": self.name, "extra_epochs": self.train_epochs(wb)}
        spec = {
            **base,
            "stage": self.method,
            "base": self.base,
            "start": self.start_map(c),
            "refiner_width": c.refiner_width,
            "refiner_depth": c.refiner_depth,
            "iterations": c.iterations,
            "kernel": c.dyspn_kernel,
            "refine_epochs": self.train_epochs(wb),
            "refine_lr": c.refine_lr,
            "perturb": c.perturb,
            "deep_supervision": c.deep_supervision,
            "boundary_weight": c.boundary_weight,
        }
        # added only when set: the checkpoints of frozen-base refiners keep their names
        if c.tune_base:
            spec["tune_base"] = True
        if c.perturb_truth:
            spec["perturb_truth"] = c.perturb_truth
        if c.confidence and self.method != "control":
            spec["confidence"] = True
        # 3 x 3: one ring, nothing to dilate
        if self.method == "dyspn" and c.dyspn_dilation != 1 and c.dyspn_kernel > 3:
            spec["dilation"] = c.dyspn_dilation
        if self.method == "cspn" and self.cspn_gain(c) != 1:
            spec["cspn_gain"] = self.cspn_gain(c)
        if self.guidance_init(c) != "scratch":
            spec["guidance_init"] = self.guidance_init(c)
            if c.warm_lr_factor != 1:
                spec["warm_lr_factor"] = c.warm_lr_factor
        if c.start_weight and supervises_start(self.method, self.start_map(c)):
            spec["start_weight"] = c.start_weight
        if self.init_from:
            spec["init_from"] = get(self.init_from).spec(wb)
        return spec

    def start_map(self, cfg: Config) -> str:
        """H^0 of a refiner: its variant's, else its setting's (``start_map`` /
        ``converged_start_map``)."""
        return self.start or self.default_start(cfg)

    def default_start(self, cfg: Config) -> str:
        return self.setting(cfg, "start_map")

    def setting(self, cfg: Config, field: str):
        """A per-setting field of the configuration: ``field`` on the minimally trained coarse net,
        ``converged_<field>`` on the converged one."""
        return getattr(cfg, field if self.base == "coarse" else f"converged_{field}")

    def cspn_gain(self, cfg: Config) -> float:
        """The gain of a CSPN head in this stage's setting (``cspn_gain`` /
        ``converged_cspn_gain``)."""
        return self.setting(cfg, "cspn_gain")

    def guidance_init(self, cfg: Config) -> str:
        """How the guidance U-Net starts in this stage's setting (``guidance_init`` /
        ``converged_guidance_init``): from scratch, or from the base net's weights."""
        return self.setting(cfg, "guidance_init")

    def checkpoint(self, wb: "Workbook") -> Path:
        """``run_dir/<name>-<hash of spec>.pt``: another setting gets its own file, so changing the
        configuration never overwrites (or is refused by) what an earlier setting trained."""
        digest = hashlib.sha1(json.dumps(self.spec(wb), sort_keys=True).encode()).hexdigest()[:8]
        return wb.run_dir / f"{self.name}-{digest}.pt"

    # -------------------------------------------------------------------------- the model
    def build(self, cfg: Config, base_model: nn.Module | None = None) -> nn.Module:
        """A fresh model of this stage: a coarse U-Net (a ``longer`` one starts from its base's
        weights), or a refiner on ``base_model`` (frozen; with ``tune_base`` on a copy of it,
        so that fine-tuning never changes the base net the other stages share)."""
        if self.kind == "refiner":
            return Refiner.from_config(
                cfg,
                base_model,
                self.method,
                self.start_map(cfg),
                cspn_gain=self.cspn_gain(cfg),
                guidance_init=self.guidance_init(cfg),
            )
        model = CoarseSegmenter.from_config(cfg)
        if self.kind == "longer":
            model.load_state_dict(base_model.state_dict())
        return model

    def variant(
        self,
        cfg: Config,
        start: str | None = None,
        epochs: int | None = None,
        init_from: str | None = None,
    ) -> "Stage":
        """This refiner with another start map, epoch budget or warm start; a variant has its own
        name (``cspn-corrected``, ``cspn-e24``, ``dyspn-from-control``, and ``control-longer`` for
        the control started from itself: trained on), so tables and ``results.json`` tell it
        apart."""
        if start in (None, self.default_start(cfg)) and epochs is None and init_from is None:
            return self
        if self.kind != "refiner":
            raise ValueError(
                f"only a refiner has start / epochs / init_from variants, not {self.name!r}"
            )
        name, label = self.name, self.label
        if start not in (None, self.default_start(cfg)):
            name, label = f"{name}-{start}", f"{label} ({start} start)"
        if epochs is not None:
            name, label = f"{name}-e{epochs}", f"{label} ({epochs} epochs)"
        if init_from is not None:
            donor = get(init_from)
            name, label = (
                (f"{name}-longer", f"{label}, trained on")
                if donor.method == self.method
                else (f"{name}-from-{donor.method}", f"{label} (from the trained {donor.method})")
            )
        return replace(
            self, name=name, label=label, start=start, epochs=epochs, init_from=init_from
        )


def stage_name(base: str, what: str) -> str:
    """``coarse`` / ``converged`` for the base net, ``<base>-longer`` for its equal-compute
    control, ``cspn`` / ``converged+cspn`` (etc.) for a refiner on it."""
    if what == "base":
        return base
    if what == "longer":
        return f"{base}-longer"
    return what if base == "coarse" else f"{base}+{what}"


def _declare() -> dict[str, Stage]:
    """The registry, in the order of the comparison table: from nothing learned to the most
    elaborate refiner, in each setting."""
    base_label = {"coarse": "coarse U-Net", "converged": "converged U-Net"}
    method_label = {"control": "refiner U-Net, no propagation", "cspn": "CSPN", "dyspn": "DySPN"}
    stages = []
    for base in BASES:
        prefix = "" if base == "coarse" else "converged + "
        stages.append(Stage(base, base_label[base], "base", base))
        if base == "coarse":
            stages.append(Stage("guided-filter", "guided filter (no training)", "filter", base))
        stages.append(
            Stage(stage_name(base, "longer"), f"{base_label[base]} trained on", "longer", base)
        )
        stages += [
            Stage(stage_name(base, m), prefix + method_label[m], "refiner", base, m)
            for m in METHODS
        ]
    return {s.name: s for s in stages}


REGISTRY: dict[str, Stage] = _declare()
SETTINGS: dict[str, tuple[str, ...]] = {
    b: tuple(n for n, s in REGISTRY.items() if s.base == b) for b in BASES
}
SETTING_TITLES = {
    "coarse": "the report's setting: refining the minimally trained coarse U-Net",
    "converged": "refining a converged U-Net (one long cycle, the best averaged epoch kept)",
}


def select(
    settings: tuple[str, ...] | list[str], only: tuple[str, ...] | list[str] | None = None
) -> tuple[str, ...]:
    """The stages of ``settings`` (bases: ``coarse`` and / or ``converged``) in the registry's
    order; with ``only``, just those stages and the base net of each (every gain is measured
    against it). A name outside the settings is a ``ValueError`` that lists the choices."""
    bad = [b for b in settings if b not in BASES]
    if bad:
        raise ValueError(f"settings must be among {BASES}, got {bad}")
    names = tuple(n for b in BASES if b in settings for n in SETTINGS[b])
    if only is None:
        return names
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(
            f"no stage {', '.join(map(repr, unknown))} in the settings {', '.join(settings)}; "
            f"choose among {', '.join(names)}"
        )
    wanted = set(only) | {REGISTRY[n].base for n in only}
    return tuple(n for n in names if n in wanted)


def get(name: str | Stage) -> Stage:
    """The registered stage ``name`` (a :class:`Stage` is returned as is)."""
    if isinstance(name, Stage):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(REGISTRY)}") from None


def refiner(base: str, method: str) -> Stage:
    """The registered refiner (or no-propagation control) of ``method`` on ``base``."""
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return REGISTRY[stage_name(base, method)]
