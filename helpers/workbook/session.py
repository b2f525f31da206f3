"""One run of the workbook: its configuration, data and folders (:class:`Workbook`), and what a
trained stage hands back (:class:`StageResult`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.checkpoint import REPO_ROOT, file_slug
from ..core.config import Config, budget_minutes, load_config
from ..core.runtime import keep_freed_memory
from ..data.dataset import PetSegmentation, build_datasets
from ..data.sources import DATA_DIR, DataSource, resolve_source
from ..models.guided_filter import GuidedFilterRefiner
from ..models.refiner import Refiner
from ..models.unet import count_parameters
from ..training.loop import History

SHOWCASE_ID = "Abyssinian_100"  # the report's Fig. 2-4 image
RUNS_DIR = REPO_ROOT / "runs"


@dataclass
class Workbook:
    """One run: configuration, data source, train / val / test datasets, and its folders."""

    cfg: Config
    source: DataSource
    data: dict[str, PetSegmentation]
    runs_dir: Path = RUNS_DIR  # runs/<profile>/... (checkpoints, results.json)
    # base nets and donors (init_from) loaded in this session
    stages: dict = field(default_factory=dict)
    # the timed steps of the plan and the budget (helpers.workbook.timing.StepTimes), once
    times: object = None
    budget: object = None  # the budget's choice (helpers.workbook.plan.BudgetChoice), if any
    pending_budget: float | None = None  # minutes of a budget whose choice waits for a timing
    plan_shown: bool = False  # the plan was printed (here, or by `python -m helpers run`)

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
    def profile_dir(self) -> Path:
        """``runs/<profile>``: the executed notebooks, ``results.json`` and every data source's
        runs."""
        return self.runs_dir / self.cfg.profile

    @property
    def run_dir(self) -> Path:
        """``runs/<profile>/<data name>-<data digest>/seed<k>``."""
        return self.profile_dir / file_slug(self.data_id.replace("@", "-")) / f"seed{self.cfg.seed}"

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
        return (
            f"profile {self.cfg.profile}, seed {self.cfg.seed}, device {self.cfg.device}, "
            f"{self.cfg.image_size} px; images: {sizes}"
        )


def open_workbook(
    profile: str | None = None,
    data_root: str | Path | None = None,
    seed: int | None = None,
    verbose: bool = True,
    runs_dir: str | Path = RUNS_DIR,
    data_dir: str | Path = DATA_DIR,
    budget: float | None = None,
    **overrides,
) -> Workbook:
    """Configuration from the environment, data source resolved and printed, datasets decoded.
    ``runs_dir`` and ``data_dir`` (default: the repository's ``runs/`` and ``data/``) are where
    this run writes. ``budget`` (default ``WORKBOOK_BUDGET``): minutes the training still to do
    must fit, by training a share of the epochs (:func:`helpers.workbook.plan.apply_budget`)."""
    from .plan import PLANNED_ENV, apply_budget

    cfg = load_config(profile, seed, **overrides)
    budget = budget if budget is not None else budget_minutes()
    if not cfg.cuda:
        keep_freed_memory()  # evaluation and training reuse freed memory (helpers/runtime.py)
    source = resolve_source(cfg, data_root, verbose=verbose, data_dir=Path(data_dir))
    data = build_datasets(cfg, source, progress=verbose, data_dir=Path(data_dir))
    wb = Workbook(cfg, source, data, Path(runs_dir))
    wb.plan_shown = os.environ.get(PLANNED_ENV) == "1"
    if verbose:
        print(wb.summary())
    if budget is not None:
        apply_budget(wb, budget, verbose=verbose)
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
    image_miou: list  # per validation image
    # per-image counts of each split, (confusion matrices (N, C, C), boundary counts (N, C, 2)):
    # the metrics above are their sums; the benchmarks' bootstrap resamples them
    val_counts: tuple = ()
    test_counts: tuple = ()
    # what was chosen for this stage (e.g. the filter's radius)
    settings: dict = field(default_factory=dict)
    base: str = "coarse"  # the setting: the base net its gains are measured against

    @property
    def parameters(self) -> int:
        """Parameters this stage trained (a refiner's guidance U-Net, and its copy of the coarse
        net where it tunes it; a frozen coarse net is shared; the guided filter trains none)."""
        if isinstance(self.model, GuidedFilterRefiner):
            return 0
        if isinstance(self.model, Refiner):
            return count_parameters(self.model, trainable_only=True)
        return count_parameters(self.model)

    def row(self) -> dict:
        row = {
            **self.val_metrics,
            "test": self.test_metrics,
            "parameters": self.parameters,
            "train_seconds": round(self.history.seconds, 1),
            "epochs": len(self.history.epoch),
        }
        return {**row, "settings": self.settings} if self.settings else row
