"""Propagation on top of a trained corrector: propagators started from the trained
no-propagation control, against that control trained on for the same steps.

The diagnostic `benchmarks/propagate_control.py` found that a trained DySPN's affinities lift
the control's map, but with two guidance U-Nets. This trains the one-network version: a CSPN or
DySPN refiner whose guidance U-Net and start head are copied from the trained control (its
affinity and attention channels start at zero, so at step 0 it computes exactly the control's
map; :func:`helpers.models.guidance.init_from_refiner`), trained for a refiner's budget with
propagation. Its equal-compute control is the control trained on from its own weights for the
same budget (``control-longer``): the same network, the same steps, no propagation. For each
split it prints mIoU / Boundary IoU per seed and the paired per-image bootstrap 95% interval
of each row's gain over the control and over the control trained on, pooled over seeds.

    python benchmarks/from_control.py --data-root ../shared/oxford-pets-sample --profile cpu --seeds
    0 1 2

Each run trains three stages per seed and setting (the control trained on and the two
propagators); the control and the jointly trained refiners are loaded from the checkpoints the
notebooks or ``benchmarks/quality.py`` wrote (trained first where missing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _seeds, also when loaded by path

from _seeds import seed_parser, seed_workbooks  # noqa: E402

PROPAGATORS = ("cspn", "dyspn")


def main(argv: list[str] | None = None) -> int:
    parser = seed_parser(__doc__)
    parser.add_argument(
        "--settings", nargs="+", choices=("coarse", "converged"), default=["coarse", "converged"]
    )
    parser.add_argument("--methods", nargs="+", choices=PROPAGATORS, default=list(PROPAGATORS))
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples of the images"
    )
    args = parser.parse_args(argv)

    from helpers.analysis.statistics import counts_summary, paired_bootstrap
    from helpers.core.checkpoint import atomic_write_text, display_path, file_slug
    from helpers.workbook import stages as registry
    from helpers.workbook.workflow import refine_stage

    counts: dict = {}  # (split, setting, row) -> one (cms, bcs) per seed
    rows: dict = {}  # setting -> row names in order
    for wb in seed_workbooks(parser, args):
        for setting in args.settings:
            on = {"base": setting}
            longer = refine_stage(wb, "control", init_from="control", **on)
            # the control, as loaded for the stages started from it (wb.stages holds it)
            trained = {
                "control": wb.stages[registry.refiner(setting, "control").name],
                "control trained on": longer,
            }
            for method in args.methods:
                trained[method] = refine_stage(wb, method, **on)
                trained[f"{method} from the control"] = refine_stage(
                    wb, method, init_from="control", **on
                )
            rows[setting] = list(trained)
            for split in ("val", "test"):
                for row, result in trained.items():
                    got = result.val_counts if split == "val" else result.test_counts
                    if got:
                        counts.setdefault((split, setting, row), []).append(got)

    seeds = ", ".join(map(str, args.seeds))
    doc = {
        "data_source": wb.data_id,
        "profile": wb.cfg.profile,
        "seeds": args.seeds,
        "settings": args.settings,
        "rows": {},
    }
    for split in ("val", "test"):
        if not any(key[0] == split for key in counts):
            continue
        print(
            f"\n== {split} split ({len(wb.data[split])} images), seeds {seeds}: mIoU / Boundary "
            "IoU per seed; "
            "gain over the control, then over the control trained on, pooled over seeds [paired "
            "bootstrap 95%]"
        )
        for setting in args.settings:
            print(f"  -- {registry.SETTING_TITLES[setting]}")
            for row in rows[setting]:
                runs = counts[(split, setting, row)]
                per_seed = [counts_summary(*c)[0] for c in runs]
                entry = {
                    "per_seed": [{m: s[m] for m in ("miou", "boundary_iou")} for s in per_seed]
                }
                line = "  ".join(f"{m['miou']:.4f}/{m['boundary_iou']:.4f}" for m in per_seed)
                for ref in ("control", "control trained on"):
                    if row == ref or (ref == "control trained on" and row == "control"):
                        continue
                    gain = paired_bootstrap(counts[(split, setting, ref)], runs, args.resamples)
                    entry[f"over {ref}"] = {m: g for m, g in gain.items() if m != "pet_iou"}
                    line += f"   over {ref}: " + ", ".join(
                        f"{m} {g['gain']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
                        for m, g in gain.items()
                        if m != "pet_iou"
                    )
                doc["rows"][f"{split}/{setting}/{row}"] = entry
                print(f"    {row:22s} {line}")
    # the settings in the name: a run of one setting never overwrites another's
    name = f"{wb.source.name}-{'-'.join(args.settings)}-seeds{'-'.join(map(str, args.seeds))}"
    out = wb.profile_dir / f"from-control-{file_slug(name)}.json"
    atomic_write_text(json.dumps(doc, indent=2), out)
    print(f"wrote {display_path(out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
