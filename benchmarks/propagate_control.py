"""Does propagation add to a good map? Propagate the no-propagation control's map with a trained
propagator's affinities, without training anything, and compare with the control itself.

A trained CSPN or DySPN refiner ties the no-propagation control (README, *Results*), although
its propagation removes errors next to a right label that the control leaves
(`benchmarks/error_bands.py --measure label`). This separates the two parts of a propagator:
its start map H^0 (corrected by its own guidance net, trained only through the propagated
maps) and its propagation. For each seed and split it scores the control, the propagator as
trained, and the propagator's affinities (and DySPN's attention) applied to the control's map
as H^0 (:meth:`helpers.models.refiner.Refiner.refine` with ``start=``), with the paired per-image
bootstrap 95% interval of the gain over the control pooled over seeds.

This is a diagnostic, not a stage: the last row runs two guidance U-Nets (the control's and the
propagator's), so its gain over the control is not an equal-compute comparison.

    python benchmarks/propagate_control.py --data-root ../shared/oxford-pets-sample --profile cpu
    --seeds 0 1 2

Stages are loaded from the checkpoints the notebooks or ``benchmarks/quality.py`` wrote
(runs/<profile>/<data>-<digest>/seed<k>/); a missing one is trained first, as there.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _seeds, also when loaded by path

from _seeds import seed_parser, seed_workbooks  # noqa: E402

PAIRS = {
    "coarse": ("control", ("cspn", "dyspn")),
    "converged": ("converged+control", ("converged+cspn", "converged+dyspn")),
}


def main(argv: list[str] | None = None) -> int:
    parser = seed_parser(__doc__)
    parser.add_argument("--settings", nargs="+", choices=tuple(PAIRS), default=list(PAIRS))
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples of the images"
    )
    args = parser.parse_args(argv)

    import torch

    from helpers.analysis.statistics import counts_summary, image_counts, paired_bootstrap
    from helpers.data.batches import split_batches
    from helpers.workbook.workflow import run_stage

    counts: dict = {}  # (split, row) -> one (cms, bcs) per seed
    for wb in seed_workbooks(parser, args):
        splits = [s for s in ("val", "test") if len(wb.data[s])]
        for setting in args.settings:
            control_name, propagators = PAIRS[setting]
            control = run_stage(wb, control_name, progress=False)
            trained = {name: run_stage(wb, name, progress=False) for name in propagators}
            for split in splits:
                probs = control.val_probs if split == "val" else control.test_probs
                counts.setdefault((split, control_name), []).append(
                    control.val_counts if split == "val" else control.test_counts
                )
                for name, stage in trained.items():
                    counts.setdefault((split, name), []).append(
                        stage.val_counts if split == "val" else stage.test_counts
                    )
                    model, maps, lo = stage.model.eval(), [], 0
                    with torch.inference_mode():
                        for images, _ in split_batches(
                            wb.data[split], wb.cfg.batch_size, wb.device
                        ):
                            start = probs[lo : lo + len(images)].to(wb.device)
                            maps.append(model.refine(images, start=start).probs.float().cpu())
                            lo += len(images)
                    targets = wb.data[split].targets
                    counts.setdefault((split, f"{name} on {control_name}"), []).append(
                        image_counts(torch.cat(maps).argmax(1), targets, probs.shape[1], wb.device)
                    )
    seeds = ", ".join(map(str, args.seeds))
    for split in ("val", "test"):
        rows = [key[1] for key in counts if key[0] == split]
        if not rows:
            continue
        print(
            f"\n== {split} split, seeds {seeds}: mIoU / Boundary IoU per seed, then the gain over "
            "the "
            f"setting's control pooled over seeds [paired bootstrap 95%]"
        )
        for setting in args.settings:
            control_name, propagators = PAIRS[setting]
            for row in [
                control_name,
                *propagators,
                *(f"{p} on {control_name}" for p in propagators),
            ]:
                per_seed = [counts_summary(*c)[0] for c in counts[(split, row)]]
                line = "  ".join(f"{m['miou']:.4f}/{m['boundary_iou']:.4f}" for m in per_seed)
                if row != control_name:
                    gain = paired_bootstrap(
                        counts[(split, control_name)], counts[(split, row)], args.resamples
                    )
                    line += "   gain " + ", ".join(
                        f"{m} {g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
                        for m, g in gain.items()
                        if m != "pet_iou"
                    )
                print(f"  {row:36s} {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
