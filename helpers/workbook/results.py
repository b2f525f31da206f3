"""What the stages scored: one table formatter, one writer of ``results.json``.

* :func:`stage_rows` / :func:`comparison_rows`: one dict per stage (metrics, parameters,
  training time; with the latter also inference time per image);
* :func:`format_table`: the plain-text table of such rows, one block per setting of the
  registry, with each row's gain over its setting's base net (:func:`compare_table` for a few
  named stages in notebooks 02 and 03);
* :func:`record_results`: merge stages into ``runs/<profile>/results.json``.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from ..core.checkpoint import atomic_write_text, display_path, file_lock, library_versions
from ..core.config import changed_settings
from . import stages as registry
from .session import StageResult, Workbook
from .timing import seconds_per_image


def base_of(stage: str) -> str:
    """The base net a registered stage's gain is measured against: ``coarse``, or ``converged``."""
    return registry.get(stage).base


# ------------------------------------------------------------------------------ tables
def stage_rows(stages: dict[str, StageResult], split: str = "val") -> list[dict]:
    """One dict per stage (keyed by the label to show): stage, label, mIoU, pet IoU, Boundary IoU
    on ``split``, trained parameters, training seconds (a refiner's excludes its base net) and
    epochs."""
    rows = []
    for label, r in stages.items():
        m = r.val_metrics if split == "val" else r.test_metrics
        if not m:  # a folder without test images has no test metrics
            continue
        rows.append(
            {
                "stage": r.name,
                "base": r.base,
                "label": label,
                **m,
                "parameters": r.parameters,
                "train_seconds": r.history.seconds,
                "epochs": len(r.history.epoch),
                "settings": r.settings,
            }
        )
    return rows


def comparison_rows(wb: Workbook, stages: dict[str, StageResult], split: str = "val") -> list[dict]:
    """:func:`stage_rows` of stages keyed by registry name, labelled from the registry, with the
    inference time per image (``ms_per_image``, batched as in evaluation)."""
    rows = stage_rows(
        {
            registry.REGISTRY[name].label if name in registry.REGISTRY else name: r
            for name, r in stages.items()
        },
        split,
    )
    for row, r in zip(rows, stages.values()):
        row["ms_per_image"] = 1000 * seconds_per_image(
            r.model, wb.data["val"], wb.device, wb.cfg.batch_size
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of rows from :func:`stage_rows` or :func:`comparison_rows`: a block per
    setting (the report's, the converged net's) whose rows show the gain in mIoU and Boundary IoU
    over the setting's base net where it is in the table; ms per image where timed."""
    timed = all("ms_per_image" in r for r in rows)
    head = (
        f"{'':42s} {'mIoU':>6s} {'gain':>7s} {'pet IoU':>8s} {'Bnd IoU':>8s} {'gain':>7s} "
        f"{'params':>9s} "
        f"{'train s':>8s}" + (f" {'ms/img':>7s}" if timed else "")
    )
    by_stage = {r["stage"]: r for r in rows}
    lines, setting = [], None
    for r in rows:
        base = r["base"]
        if base != setting:
            setting = base
            lines += ([""] if lines else []) + [registry.SETTING_TITLES[base], head]
        ref = by_stage.get(base)
        # no base row: no gain
        gain = (lambda m: f"{r[m] - ref[m]:+7.3f}") if ref else (lambda m: f"{'':7s}")
        lines.append(
            f"{r['label']:42s} {r['miou']:6.3f} {gain('miou')} {r['pet_iou']:8.3f} "
            f"{r['boundary_iou']:8.3f} {gain('boundary_iou')} {r['parameters']:9,d} "
            f"{r['train_seconds']:8.0f}" + (f" {r['ms_per_image']:7.1f}" if timed else "")
        )
    return "\n".join(lines)


def compare_table(results: dict[str, StageResult], split: str = "val") -> str:
    """:func:`format_table` of a few stages keyed by the label to show (notebooks 02 and 03)."""
    return format_table(stage_rows(results, split))


# ------------------------------------------------------------------------------ results.json
def results_path(wb: Workbook) -> Path:
    return wb.profile_dir / "results.json"


def read_results(path: Path) -> dict | None:
    """``results.json`` as a dict, or None when it is missing. A file that cannot be parsed (a
    crash of another tool, a hand edit) is moved aside with a warning instead of stopping the
    run."""
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
    warnings.warn(
        f"{display_path(path)} could not be read ({problem}); moved it to {aside.name} and "
        "started a new one"
    )
    return None


def record_results(wb: Workbook, *results: StageResult) -> dict:
    """Merge stage metrics into ``runs/<profile>/results.json``: locked against other writers,
    written atomically. A file written for other data (another :attr:`Workbook.data_id`) or
    another seed is started afresh, so results are never mixed; each stage carries the time it
    was recorded, so a partial run's table says which stages are older."""
    path = results_path(wb)
    with file_lock(path):
        doc = {
            "profile": wb.cfg.profile,
            "data_source": wb.data_id,
            "seed": wb.cfg.seed,
            "stages": {},
        }
        old = read_results(path)
        if old and (old.get("data_source"), old.get("seed")) == (doc["data_source"], doc["seed"]):
            doc["stages"] = old["stages"]
        now = time.time()  # seconds since the epoch: comparable across time zones and clock changes
        for r in results:
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.row().items()}
            doc["stages"][r.name] = {
                **row,
                "test": {k: round(v, 4) for k, v in r.test_metrics.items()},
                "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "recorded_at": round(now, 3),
            }
        # what --set changed (python -m helpers run --set ... with these reproduces the run)
        doc["settings"] = changed_settings(wb.cfg)
        if wb.budget is not None:  # what the budget chose (its step_scale is in the settings)
            doc["budget"] = wb.budget.record()
        doc["versions"] = library_versions()
        atomic_write_text(json.dumps(doc, indent=2), path)
    return doc
