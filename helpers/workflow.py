"""The workbook's stages, as the notebooks call them: open a run, get the coarse model, refine.

A :class:`Workbook` ties together one configuration, one data source and the datasets. Stages:
``coarse_stage`` (notebook 01), ``refine_stage`` (control / cspn / dyspn, notebooks 02-03), and
the baselines of notebook 04, ``coarse_longer_stage`` (the equal-compute control) and
``guided_filter_stage``. Stage outputs live under ``runs/<profile>/<data name>-<digest>/seed<k>/`` so
that later notebooks find what earlier ones produced (and rebuild it, with a message, when it
is missing).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import atomic_save, atomic_write_text, file_lock, library_versions
from .config import Config, load_config
from .data import REPO_ROOT, DataSource, PetSegmentation, build_datasets, display_path, resolve_source
from .guided_filter import GuidedFilterRefiner, filter_probabilities
from .metrics import SegmentationMeter
from .refiner import CoarseSegmenter, Refiner
from .training import History, evaluate_probs, fit, load_trained, predict, seed_everything
from .unet import count_parameters

SHOWCASE_ID = "Abyssinian_100"   # the report's Fig. 2-4 image
RUNS_DIR = REPO_ROOT / "runs"


@dataclass
class Workbook:
    """One run: configuration, data source, train / val / test datasets, output folder."""

    cfg: Config
    source: DataSource
    data: dict[str, PetSegmentation]
    stages: dict = field(default_factory=dict)   # stage name -> StageResult, filled as stages run

    @property
    def data_id(self) -> str:
        """What identifies the data of this run: the source's name and a digest of the ids,
        pixels and masks of train, val and test. Two folders with the same name but different
        contents (or one folder whose files were rewritten) never share models or results."""
        digest = hashlib.sha1()
        for split in sorted(self.data):
            digest.update(f"{split}:{self.data[split].fingerprint()};".encode())
        return f"{self.source.name}@{digest.hexdigest()[:10]}"

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>/<data name>-<data digest>/seed<k>``."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.data_id.replace("@", "-"))
        return RUNS_DIR / self.cfg.profile / slug / f"seed{self.cfg.seed}"

    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    @property
    def showcase_index(self) -> int:
        """Validation index of Abyssinian_100 when present, else of a fixed image (the first)."""
        ids = self.data["val"].ids
        return ids.index(SHOWCASE_ID) if SHOWCASE_ID in ids else 0

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.data.items())
        return (f"profile {self.cfg.profile}, seed {self.cfg.seed}, device {self.cfg.device}, "
                f"{self.cfg.image_size} px; images: {sizes}")


def open_workbook(profile: str | None = None, data_root: str | Path | None = None, seed: int | None = None,
                  verbose: bool = True, **overrides) -> Workbook:
    """Configuration from the environment, data source resolved and printed, datasets decoded."""
    cfg = load_config(profile, seed, **overrides)
    source = resolve_source(cfg, data_root, verbose=verbose)
    data = build_datasets(cfg, source, progress=verbose)
    wb = Workbook(cfg, source, data)
    if verbose:
        print(wb.summary())
    return wb


@dataclass
class StageResult:
    """A trained model with its history and its probabilities on val and test."""

    name: str
    model: torch.nn.Module
    history: History
    val_probs: torch.Tensor
    test_probs: torch.Tensor
    val_metrics: dict
    test_metrics: dict
    image_miou: list          # per validation image
    settings: dict = field(default_factory=dict)   # what was chosen for this stage (e.g. the filter's radius)

    @property
    def parameters(self) -> int:
        """Parameters this stage trained (a refiner's guidance U-Net; the coarse net is shared;
        the guided filter trains none)."""
        if isinstance(self.model, GuidedFilterRefiner):
            return 0
        return count_parameters(getattr(self.model, "guidance", self.model))

    def row(self) -> dict:
        row = {**self.val_metrics, "test": self.test_metrics, "parameters": self.parameters,
               "train_seconds": round(self.history.seconds, 1), "epochs": len(self.history.epoch)}
        return {**row, "settings": self.settings} if self.settings else row


def epochs_for(epochs: int, min_steps: int, n_train: int, batch_size: int, what: str | None = None) -> int:
    """``epochs``, raised where needed so that training takes at least ``min_steps`` optimiser
    steps: an epoch of a few dozen images is not an epoch of thousands. Says so when it acts."""
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    needed = max(epochs, math.ceil(min_steps / steps_per_epoch))
    if needed > epochs and what:
        print(f"{what}: {n_train} training images make {steps_per_epoch} steps per epoch; "
              f"training {needed} epochs instead of {epochs} to reach {min_steps} steps")
    return needed


# The two settings of the comparison: refine the report's minimally trained coarse U-Net
# ("coarse"), or a coarse U-Net trained until its validation mIoU stops improving ("converged").
BASES = ("coarse", "converged")


def stage_name(base: str, what: str) -> str:
    """The stage's name: ``coarse`` / ``converged`` for the base net, ``<base>-longer`` for its
    equal-compute control, ``cspn`` / ``converged+cspn`` (etc.) for a refiner on it."""
    if what == "base":
        return base
    if what == "longer":
        return f"{base}-longer"
    return what if base == "coarse" else f"{base}+{what}"


def parse_stage(name: str) -> tuple[str, str]:
    """Inverse of :func:`stage_name`: ``"converged+cspn"`` -> ``("converged", "cspn")``."""
    base, plus, what = name.partition("+")
    if plus:
        return base, what
    if name in BASES:
        return name, "base"
    if name.endswith("-longer") and name[:-len("-longer")] in BASES:
        return name[:-len("-longer")], "longer"
    return "coarse", name


def _check_base(base: str) -> None:
    if base not in BASES:
        raise ValueError(f"base must be one of {BASES}, got {base!r}")


def _coarse_spec(wb: Workbook, epochs: int, base: str = "coarse") -> dict:
    c = wb.cfg
    spec = {"stage": "coarse", "data": wb.data_id, "image_size": c.image_size, "coarse_size": c.coarse_size,
            "width": c.coarse_width, "depth": c.coarse_depth, "epochs": epochs, "lr": c.coarse_lr,
            "batch_size": c.batch_size, "seed": c.seed, "n_train": len(wb.data["train"])}
    if base == "converged":
        spec.update(stage="converged", patience=c.converged_patience)
    return spec


def _refiner_spec(wb: Workbook, method: str, start: str, base_epochs: int, epochs: int, base: str = "coarse") -> dict:
    c = wb.cfg
    return {**_coarse_spec(wb, base_epochs, base), "stage": method, "base": base, "start": start,
            "refiner_width": c.refiner_width, "refiner_depth": c.refiner_depth, "iterations": c.iterations,
            "kernel": c.dyspn_kernel, "refine_epochs": epochs, "refine_lr": c.refine_lr, "perturb": c.perturb,
            "deep_supervision": c.deep_supervision, "boundary_weight": c.boundary_weight}


def checkpoint_path(wb: Workbook, name: str, spec: dict) -> Path:
    """``run_dir/<name>-<hash of spec>.pt``: another setting gets its own file, so changing the
    configuration never overwrites (or is refused by) what an earlier setting trained."""
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
    return wb.run_dir / f"{name}-{digest}.pt"


def coarse_epochs(wb: Workbook, verbose: bool = True, base: str = "coarse") -> int:
    """Epochs the base U-Net trains: the profile's (raised for small training sets), or for the
    converged net the cap of its early stopping."""
    c = wb.cfg
    epochs = epochs_for(c.coarse_epochs, c.coarse_min_steps, len(wb.data["train"]), c.batch_size,
                        "coarse U-Net" if verbose and base == "coarse" else None)
    return max(epochs, c.converged_max_epochs) if base == "converged" else epochs


def _finish(wb: Workbook, name: str, model, history: History, settings: dict | None = None) -> StageResult:
    cfg = wb.cfg
    val = predict(model, wb.data["val"], cfg.batch_size, wb.device, cfg.amp)
    val_metrics, image_miou = evaluate_probs(val, wb.data["val"])
    if len(wb.data["test"]):
        test = predict(model, wb.data["test"], cfg.batch_size, wb.device, cfg.amp)
        test_metrics, _ = evaluate_probs(test, wb.data["test"])
    else:  # a folder without test.txt: there is nothing to report on
        test, test_metrics = val.new_zeros((0,) + val.shape[1:]), {}
    result = StageResult(name, model, history, val, test, val_metrics, test_metrics, image_miou, settings or {})
    wb.stages[name] = result
    return result


def _train_or_load(wb: Workbook, model: torch.nn.Module, name: str, label: str, spec: dict, epochs: int,
                   lr: float, retrain: bool, progress: bool, **fit_options) -> tuple[History, Path]:
    """Load the finished run of ``spec`` into ``model``, or train it (resuming an unfinished one)."""
    cfg = wb.cfg
    ckpt = checkpoint_path(wb, name, spec)
    if retrain and ckpt.exists():
        ckpt.unlink()
    history = load_trained(model, ckpt, spec, epochs)
    if history is None:
        history = fit(model, train_set=wb.data["train"], val_set=wb.data["val"], epochs=epochs, lr=lr,
                      batch_size=cfg.batch_size, device=wb.device, seed=cfg.seed, weight_decay=cfg.weight_decay,
                      amp=cfg.amp, checkpoint=ckpt, spec=spec, desc=label, progress=progress, **fit_options)
    else:
        print(f"loaded the trained {label} from {display_path(ckpt)}")
    return history, ckpt


BASE_LABELS = {"coarse": "coarse U-Net", "converged": "converged U-Net"}


def _coarse_predictions_path(wb: Workbook, base: str = "coarse") -> Path:
    ckpt = checkpoint_path(wb, base, _coarse_spec(wb, coarse_epochs(wb, False, base), base))
    return ckpt.with_name(ckpt.stem + "-predictions.pt")


def coarse_stage(wb: Workbook, retrain: bool = False, progress: bool = True, base: str = "coarse") -> StageResult:
    """Train (or load a finished run of) the base U-Net; save its predictions for 02 and 03.

    ``base="coarse"``: the report's minimally trained net (``coarse_epochs``); ``"converged"``:
    trained until validation mIoU stops improving for ``converged_patience`` epochs (best
    weights kept), at most ``converged_max_epochs``."""
    _check_base(base)
    cfg = wb.cfg
    seed_everything(cfg.seed)
    model = CoarseSegmenter.from_config(cfg).to(wb.device)
    epochs = coarse_epochs(wb, base=base)
    spec = _coarse_spec(wb, epochs, base)
    patience = cfg.converged_patience if base == "converged" else None
    history, _ = _train_or_load(wb, model, base, BASE_LABELS[base], spec, epochs, cfg.coarse_lr, retrain, progress,
                                patience=patience)
    result = _finish(wb, base, model, history)
    atomic_save({"val": result.val_probs.half(), "test": result.test_probs.half(),
                 "val_ids": wb.data["val"].ids, "test_ids": wb.data["test"].ids, "spec": spec},
                _coarse_predictions_path(wb, base))
    return result


def load_coarse(wb: Workbook, progress: bool = True, base: str = "coarse") -> StageResult:
    """The base stage for notebooks 02 / 03 (and the converged setting): loaded if it ran, else rebuilt."""
    _check_base(base)
    if base in wb.stages:
        return wb.stages[base]
    if not _coarse_predictions_path(wb, base).exists():
        what = "no coarse U-Net" if base == "coarse" else "no converged U-Net"
        print(f"{what} for this profile, data and seed yet: training it now"
              + (" (as notebook 01 does)" if base == "coarse" else ""))
    return coarse_stage(wb, progress=progress, base=base)


def load_coarse_predictions(wb: Workbook) -> dict:
    """The saved coarse probabilities (float16) with their ids, as notebook 01 wrote them."""
    return torch.load(_coarse_predictions_path(wb), map_location="cpu", weights_only=True)


def refine_stage(wb: Workbook, method: str, start: str | None = None, epochs: int | None = None,
                 retrain: bool = False, progress: bool = True, base: str = "coarse") -> StageResult:
    """Train (or load) a refiner of ``method`` (control / cspn / dyspn) on the frozen ``base`` net
    (the report's coarse U-Net, or the converged one)."""
    _check_base(base)
    cfg = wb.cfg
    start = start or cfg.start_map
    name = stage_name(base, method if start == cfg.start_map else f"{method}-{start}")
    epochs = epochs or refine_epochs(wb, f"{name} refiner")
    coarse = load_coarse(wb, progress, base).model
    seed_everything(cfg.seed)
    model = Refiner.from_config(cfg, coarse, method, start).to(wb.device)
    spec = _refiner_spec(wb, method, start, coarse_epochs(wb, False, base), epochs, base)
    history, _ = _train_or_load(wb, model, name, f"{name} refiner", spec, epochs, cfg.refine_lr, retrain, progress,
                                loss_fn=model.training_loss)
    return _finish(wb, name, model, history)


def refine_epochs(wb: Workbook, what: str | None = None) -> int:
    """Epochs every refiner trains (the profile's, raised for small training sets)."""
    c = wb.cfg
    return epochs_for(c.refine_epochs, c.refine_min_steps, len(wb.data["train"]), c.batch_size, what)


def _coarse_longer_spec(wb: Workbook, base: str = "coarse") -> dict:
    return {**_coarse_spec(wb, coarse_epochs(wb, False, base), base), "stage": stage_name(base, "longer"),
            "extra_epochs": refine_epochs(wb)}


def coarse_longer_stage(wb: Workbook, retrain: bool = False, progress: bool = True,
                        base: str = "coarse") -> StageResult:
    """The equal-compute control: the ``base`` U-Net trained on, from its own weights, for as
    many extra epochs as every refiner gets. A refiner must beat this, not only its base net."""
    _check_base(base)
    cfg = wb.cfg
    first = load_coarse(wb, progress, base)
    extra = refine_epochs(wb)
    seed_everything(cfg.seed)
    model = CoarseSegmenter.from_config(cfg).to(wb.device)
    model.load_state_dict(first.model.state_dict())
    spec = _coarse_longer_spec(wb, base)
    name = stage_name(base, "longer")
    label = f"{BASE_LABELS[base]}, {extra} more epochs"
    history, _ = _train_or_load(wb, model, name, label, spec, extra, cfg.coarse_lr, retrain, progress)
    return _finish(wb, name, model, history, {"extra_epochs": extra})


GUIDED_FILTER_GRID = {"radius": (2, 4, 8), "eps": (1e-3, 1e-2, 1e-1)}


def guided_filter_stage(wb: Workbook, grid: dict | None = None) -> StageResult:
    """The classical baseline: the guided filter on the coarse map, with the image as guide.
    Nothing is trained; its radius and eps are the best of ``grid`` on the validation set."""
    grid = grid or GUIDED_FILTER_GRID
    coarse = load_coarse(wb)
    val = wb.data["val"]
    t0 = time.perf_counter()
    scores = {}
    for radius in grid["radius"]:
        for eps in grid["eps"]:
            meter = SegmentationMeter(num_classes=coarse.val_probs.shape[1])
            for lo in range(0, len(val), wb.cfg.batch_size):   # batches: the 3x3 solves are memory-hungry
                images = val.images[lo:lo + wb.cfg.batch_size].float() / 255
                probs = filter_probabilities(images, coarse.val_probs[lo:lo + wb.cfg.batch_size], radius, eps)
                meter.update(probs.argmax(1), val.targets[lo:lo + wb.cfg.batch_size].long())
            scores[(radius, eps)] = meter.summary()["miou"]
    radius, eps = max(scores, key=scores.get)
    history = History(seconds=time.perf_counter() - t0)
    model = GuidedFilterRefiner(coarse.model, radius, eps)
    return _finish(wb, "guided-filter", model, history, {"radius": radius, "eps": eps})


def stage_checkpoint(wb: Workbook, name: str) -> Path:
    """Where the trained stage ``name`` (coarse, coarse-longer, control, cspn, dyspn, and the
    same on the converged net: converged, converged-longer, converged+cspn, ...) of ``wb`` is,
    or will be, saved with the current configuration."""
    base, what = parse_stage(name)
    base_epochs = coarse_epochs(wb, False, base)
    if what == "base":
        return checkpoint_path(wb, name, _coarse_spec(wb, base_epochs, base))
    if what == "longer":
        return checkpoint_path(wb, name, _coarse_longer_spec(wb, base))
    spec = _refiner_spec(wb, what, wb.cfg.start_map, base_epochs, refine_epochs(wb), base)
    return checkpoint_path(wb, name, spec)


# ------------------------------------------------------------------------------ results.json
def results_path(profile: str) -> Path:
    return RUNS_DIR / profile / "results.json"


def read_results(path: Path) -> dict | None:
    """``results.json`` as a dict, or None when it is missing. A file that cannot be parsed (a
    crash of another tool, a hand edit) is moved aside with a warning instead of stopping the run."""
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and isinstance(doc.get("stages"), dict):
            return doc
        problem = "it does not hold a 'stages' table"
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problem = f"it is not valid JSON ({exc})"
    aside = path.with_name(f"{path.stem}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.replace(path, aside)
    warnings.warn(f"{display_path(path)} could not be read ({problem}); moved it to {aside.name} and started a new one")
    return None


def record_results(wb: Workbook, *results: StageResult) -> dict:
    """Merge stage metrics into ``runs/<profile>/results.json``: locked against other writers,
    written atomically. A file written for other data (another :attr:`Workbook.data_id`) or
    another seed is started afresh, so results are never mixed; each stage carries the time it
    was recorded, so a partial run's table says which stages are older."""
    path = results_path(wb.cfg.profile)
    with file_lock(path):
        doc = {"profile": wb.cfg.profile, "data_source": wb.data_id, "seed": wb.cfg.seed, "stages": {}}
        old = read_results(path)
        if old and (old.get("data_source"), old.get("seed")) == (doc["data_source"], doc["seed"]):
            doc["stages"] = old["stages"]
        now = time.time()   # seconds since the epoch: comparable across time zones and clock changes
        for r in results:
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.row().items()}
            doc["stages"][r.name] = {**row, "test": {k: round(v, 4) for k, v in r.test_metrics.items()},
                                     "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                                     "recorded_at": round(now, 3)}
        doc["versions"] = library_versions()
        atomic_write_text(json.dumps(doc, indent=2), path)
    return doc


# ------------------------------------------------------------------------------ reporting
def compare_table(results: dict, split: str = "val") -> str:
    """A plain-text table of metrics for named :class:`StageResult` s (or metric dicts)."""
    lines = [f"{'':26s} {'mIoU':>7s} {'pet IoU':>8s} {'Boundary IoU':>13s} {'params':>10s} {'train s':>8s}"]
    for name, r in results.items():
        m = r.val_metrics if split == "val" else r.test_metrics
        lines.append(f"{name:26s} {m['miou']:7.3f} {m['pet_iou']:8.3f} {m['boundary_iou']:13.3f} "
                     f"{r.parameters:10,d} {r.history.seconds:8.0f}")
    return "\n".join(lines)


def gains_and_losses(before: list, after: list, k: int = 3) -> tuple[list, list]:
    """Indices of the ``k`` largest per-image mIoU gains and the ``k`` largest losses."""
    delta = torch.tensor(after) - torch.tensor(before)
    order = torch.argsort(delta, descending=True).tolist()
    k = min(k, len(order) // 2) if len(order) > 1 else len(order)
    return order[:k], order[::-1][:k]


@torch.inference_mode()
def refine_images(model: Refiner, dataset: PetSegmentation, indices, device, iterations: int | None = None):
    """Images (N, 3, H, W) and the refiner's :class:`~helpers.refiner.RefineOutput` for them."""
    was_training = model.training
    model.eval()
    try:
        images = torch.stack([dataset[i][0] for i in indices]).to(device)
        out = model.refine(images, iterations)
    finally:
        model.train(was_training)
    return images.cpu(), out
