"""The workbook's stages, as the notebooks call them: open a run, then train or load any stage.

A :class:`Workbook` ties together one configuration, one data source, the datasets and the run's
folders. :func:`run_stage` is the one way from a stage of the registry
(:mod:`helpers.workbook.stages`) to a :class:`StageResult`:

1. its base net is loaded (or trained first, with a message) for controls and refiners, and
   for a refiner started from another (``init_from``, e.g. ``dyspn-from-control``) that one;
2. the model is built and seeded; the spec names its checkpoint;
3. a finished run of that spec is loaded, else it is trained (:func:`helpers.training.loop.fit`,
   resuming an unfinished run);
4. its probabilities and metrics on validation and test are computed; a base net's
   probabilities are saved for the later notebooks.

The notebooks' names for it: ``coarse_stage`` / ``load_coarse`` (01), ``refine_stage``
(02-03), ``coarse_longer_stage`` and ``guided_filter_stage`` (04), ``all_stages`` (the whole
chain). Outputs live under ``runs/<profile>/<data name>-<digest>/seed<k>/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..analysis.statistics import counts_summary
from ..core.checkpoint import atomic_save, display_path
from ..data.dataset import PetSegmentation
from ..models.guidance import init_from_refiner
from ..models.guided_filter import GuidedFilterRefiner, tune_guided_filter
from ..models.refiner import Refiner
from ..training.evaluation import eval_mode, predict, split_counts
from ..training.loop import History, fit, load_trained, seed_everything
from . import stages as registry
from .plan import apply_budget, plan_or_reason
from .session import StageResult, Workbook
from .stages import Stage


# ------------------------------------------------------------------------------ one stage
def run_stage(
    wb: Workbook, stage: str | Stage, retrain: bool = False, progress: bool = True
) -> StageResult:
    """Train (or load a finished run of) ``stage`` on ``wb``; see the module docstring's steps."""
    stage = registry.get(stage)
    if wb.pending_budget is not None and stage.scaled_by_budget:
        # a budget that could not be timed when the run opened (a student's unfinished models):
        # chosen now, before the first stage it scales, so that every such stage shares it
        apply_budget(wb, wb.pending_budget)
    cfg = wb.cfg
    # 1. what it builds on: the base net, and the trained refiner it starts from, if any
    base = load_coarse(wb, progress, stage.base) if stage.trains_on else None
    if stage.kind == "filter":
        return _guided_filter(wb, stage, base)
    donor = None
    if stage.init_from:  # evaluated once per session, however many refiners start from it
        donor = wb.stages.get(stage.init_from) or run_stage(wb, stage.init_from, progress=progress)
        wb.stages[stage.init_from] = donor
    # 2. the model and its identity
    epochs = stage.train_epochs(wb, verbose=True)
    seed_everything(cfg.seed)
    model = stage.build(cfg, base.model if base else None).to(wb.device)
    if donor is not None:
        init_from_refiner(model, donor.model)
    spec, ckpt = stage.spec(wb), stage.checkpoint(wb)
    # 3. load or train
    label = _label(stage, epochs)
    if retrain and ckpt.exists():
        ckpt.unlink()
    history = load_trained(model, ckpt, spec, epochs)
    if history is None:
        if progress and not wb.plan_shown:
            # before the first stage a session trains: what is left, and how long it will take
            print("\n".join(plan_or_reason(wb)), flush=True)
            wb.plan_shown = True
        history = fit(
            model,
            train_set=wb.data["train"],
            val_set=wb.data["val"],
            epochs=epochs,
            lr=stage.lr(cfg),
            batch_size=cfg.batch_size,
            device=wb.device,
            seed=cfg.seed,
            weight_decay=cfg.weight_decay,
            amp=cfg.amp,
            checkpoint=ckpt,
            spec=spec,
            desc=label,
            progress=progress,
            converge=stage.convergence(cfg),
            loss_fn=model.training_loss if isinstance(model, Refiner) else None,
        )
    else:
        print(f"loaded the trained {label} from {display_path(ckpt)}")
    # 4. evaluate (and hand a base net's maps to the later notebooks)
    settings = {"extra_epochs": epochs} if stage.kind == "longer" else None
    result = _finish(wb, stage, model, history, settings)
    if stage.kind == "base" or stage.name in wb.stages:  # a retrained donor replaces the one held
        wb.stages[stage.name] = result
    if stage.kind == "base":
        atomic_save(
            {
                "val": result.val_probs.half(),
                "test": result.test_probs.half(),
                "val_ids": wb.data["val"].ids,
                "test_ids": wb.data["test"].ids,
                "spec": spec,
            },
            predictions_path(wb, stage.name),
        )
    return result


def _label(stage: Stage, epochs: int) -> str:
    """What progress bars and messages call the stage."""
    if stage.kind == "longer":
        return f"{registry.get(stage.base).label}, {epochs} more epochs"
    return f"{stage.name} refiner" if stage.kind == "refiner" else stage.label


def _finish(
    wb: Workbook, stage: Stage, model, history: History, settings: dict | None = None
) -> StageResult:
    cfg = wb.cfg
    val = predict(model, wb.data["val"], cfg.batch_size, wb.device, cfg.amp)
    val_counts = split_counts(val, wb.data["val"], wb.device)
    val_metrics, image_miou = counts_summary(*val_counts)
    if len(wb.data["test"]):
        test = predict(model, wb.data["test"], cfg.batch_size, wb.device, cfg.amp)
        test_counts = split_counts(test, wb.data["test"], wb.device)
        test_metrics, _ = counts_summary(*test_counts)
    else:  # a folder without test.txt: there is nothing to report on
        test, test_metrics, test_counts = val.new_zeros((0,) + val.shape[1:]), {}, ()
    propagator = getattr(model, "propagator", None)
    if propagator is not None and propagator.last_backend is not None:
        # what actually ran: the fused kernels fall back to PyTorch if they fail their self-check
        settings = {**(settings or {}), "propagation_backend": propagator.last_backend}
    return StageResult(
        stage.name,
        model,
        history,
        val,
        test,
        val_metrics,
        test_metrics,
        image_miou,
        val_counts,
        test_counts,
        settings or {},
        stage.base,
    )


def _guided_filter(
    wb: Workbook, stage: Stage, coarse: StageResult, grid: dict | None = None
) -> StageResult:
    t0 = time.perf_counter()
    (radius, eps), _ = tune_guided_filter(
        coarse.val_probs, wb.data["val"], wb.cfg.batch_size, grid, wb.device
    )
    model = GuidedFilterRefiner(coarse.model, radius=radius, eps=eps)
    return _finish(
        wb, stage, model, History(seconds=time.perf_counter() - t0), {"radius": radius, "eps": eps}
    )


def predictions_path(wb: Workbook, base: str = "coarse") -> Path:
    """Where a base net's validation and test probabilities are saved (beside its checkpoint)."""
    ckpt = registry.get(base).checkpoint(wb)
    return ckpt.with_name(ckpt.stem + "-predictions.pt")


# ------------------------------------------------------------------------------ the notebooks'
# names
def coarse_stage(
    wb: Workbook, retrain: bool = False, progress: bool = True, base: str = "coarse"
) -> StageResult:
    """Train (or load) the base U-Net: ``"coarse"``, the report's minimally trained net, or
    ``"converged"``, trained on one cycle over ``converged_max_epochs`` with the epoch of the best
    averaged validation mIoU kept (:class:`~helpers.training.loop.Convergence`)."""
    return run_stage(wb, _base(base), retrain, progress)


def load_coarse(wb: Workbook, progress: bool = True, base: str = "coarse") -> StageResult:
    """The base net for the later notebooks: already loaded in this session, loaded from its
    checkpoint, or trained now (with a message)."""
    stage = _base(base)
    if base in wb.stages:
        return wb.stages[base]
    if not predictions_path(wb, base).exists():
        print(
            f"no {stage.label} for this profile, data and seed yet: training it now"
            + (" (as notebook 01 does)" if base == "coarse" else "")
        )
    return run_stage(wb, stage, progress=progress)


def load_coarse_predictions(wb: Workbook) -> dict:
    """The saved coarse probabilities (float16) with their ids, as notebook 01 wrote them."""
    return torch.load(predictions_path(wb), map_location="cpu", weights_only=True)


def refine_stage(
    wb: Workbook,
    method: str,
    start: str | None = None,
    epochs: int | None = None,
    retrain: bool = False,
    progress: bool = True,
    base: str = "coarse",
    init_from: str | None = None,
) -> StageResult:
    """Train (or load) a refiner of ``method`` (control / cspn / dyspn) on the ``base`` net (frozen
    unless ``tune_base``);
    ``start``, ``epochs`` and ``init_from`` (a method: start from that trained refiner of the
    same base) choose a variant (see :meth:`Stage.variant`)."""
    donor = registry.refiner(base, init_from).name if init_from else None
    stage = registry.refiner(base, method).variant(wb.cfg, start, epochs, donor)
    return run_stage(wb, stage, retrain, progress)


def coarse_longer_stage(
    wb: Workbook, retrain: bool = False, progress: bool = True, base: str = "coarse"
) -> StageResult:
    """The equal-compute control: the ``base`` U-Net trained on, from its own weights, for as
    many extra epochs as every refiner gets. A refiner must beat this, not only its base net."""
    return run_stage(
        wb, registry.get(registry.stage_name(_base(base).name, "longer")), retrain, progress
    )


def guided_filter_stage(wb: Workbook, grid: dict | None = None) -> StageResult:
    """The classical baseline: the guided filter on the coarse map, with the image as guide.
    Nothing is trained; its radius and eps are the best of ``grid`` on the validation set."""
    return _guided_filter(wb, registry.get("guided-filter"), load_coarse(wb), grid)


def all_stages(
    wb: Workbook,
    progress: bool = True,
    converged: bool = True,
    wall_seconds: dict | None = None,
    only: tuple[str, ...] | list[str] | None = None,
) -> dict[str, StageResult]:
    """Every registered stage of the report's setting and, with ``converged``, of the converged
    one, each loaded from its checkpoint or trained now, in the registry's order; with ``only``,
    just those stages and their base nets (:func:`helpers.workbook.stages.select`).
    ``wall_seconds``,
    if given, receives each stage's wall-clock time (training or loading, and evaluation)."""
    names = registry.select(("coarse", "converged") if converged else ("coarse",), only)
    out = {}
    for name in names:
        t0 = time.perf_counter()
        out[name] = (
            load_coarse(wb, progress, name)
            if registry.get(name).kind == "base"
            else run_stage(wb, name, progress=progress)
        )
        if wall_seconds is not None:
            wall_seconds[name] = time.perf_counter() - t0
    return out


def _base(base: str) -> Stage:
    if base not in registry.BASES:
        raise ValueError(f"base must be one of {registry.BASES}, got {base!r}")
    return registry.get(base)


# ------------------------------------------------------------------------------ looking at results
def gains_and_losses(before: list, after: list, k: int = 3) -> tuple[list, list]:
    """Indices of the ``k`` largest per-image mIoU gains and the ``k`` largest losses."""
    delta = torch.tensor(after) - torch.tensor(before)
    order = torch.argsort(delta, descending=True).tolist()
    k = min(k, len(order) // 2) if len(order) > 1 else len(order)
    return order[:k], order[::-1][:k]


@torch.inference_mode()
def refine_images(
    model: Refiner, dataset: PetSegmentation, indices, device, iterations: int | None = None
):
    """Images (N, 3, H, W) and the refiner's :class:`~helpers.models.refiner.RefineOutput` for
    them."""
    with eval_mode(model):
        images = torch.stack([dataset[i][0] for i in indices]).to(device)
        out = model.refine(images, iterations)
    return images.cpu(), out
