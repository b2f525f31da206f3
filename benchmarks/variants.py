"""Is a tuning variant better than the defaults? Stage by stage, paired over the same images.

``benchmarks/quality.py`` compares the stages of one configuration with each other. Deciding a
default needs the other comparison: the same stage (say ``dyspn``) under two configurations,
on the same images and seeds. This script opens both configurations (each stage loaded from
its checkpoint, or trained when missing: run ``quality.py`` for both first), and prints, for
every stage whose configuration differs, the gain of the variant over the baseline, averaged
over seeds, with the paired per-image bootstrap 95% interval (the same as ``quality.py``'s)::

    python benchmarks/variants.py --data-root $PETS_ROOT --profile cpu --seeds 0 1 2 --variant
    refiner_width=16 python benchmarks/variants.py ... --baseline boundary_weight=1 --variant
    boundary_weight=4 python benchmarks/variants.py ... --settings coarse --stages control dyspn
    --variant refine_min_steps=576

Stages that the change does not touch (the base nets, when only a refiner setting changes)
load the same checkpoint twice and are left out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def compare(
    baseline: dict,
    variant: dict,
    profile: str | None,
    data_root: str | None,
    seeds: list[int],
    settings: list[str],
    resamples: int = 2000,
    runs_dir: str | None = None,
    stages: list[str] | None = None,
) -> dict[str, dict[str, dict]]:
    """{split: {stage: paired_bootstrap of the variant's stage over the baseline's}} for every
    stage whose checkpoint differs between the two configurations (the same checkpoint is the
    same stage: its name holds a hash of everything that defines it); with ``stages``, only
    those (and their base nets) are loaded or trained (:func:`helpers.workbook.stages.select`)."""
    from helpers.analysis.statistics import paired_bootstrap
    from helpers.workbook import stages as registry
    from helpers.workbook.session import open_workbook
    from helpers.workbook.workflow import all_stages

    names = registry.select(settings, stages)
    folders = {"runs_dir": Path(runs_dir)} if runs_dir else {}
    counts = {side: {"val": {}, "test": {}} for side in ("baseline", "variant")}
    paths = {side: {} for side in ("baseline", "variant")}
    for side, overrides in (("baseline", baseline), ("variant", variant)):
        for seed in seeds:
            wb = open_workbook(profile, data_root, seed, verbose=False, **folders, **overrides)
            results = all_stages(wb, progress=False, converged="converged" in settings, only=names)
            for name in names:
                paths[side][(seed, name)] = registry.get(name).checkpoint(wb)
                for split in ("val", "test"):  # the per-image counts the stage was scored with
                    result = results[name]
                    counts[side][split].setdefault(name, []).append(
                        result.val_counts if split == "val" else result.test_counts
                    )
    changed = [
        n
        for n in names
        if any(paths["baseline"][(s, n)] != paths["variant"][(s, n)] for s in seeds)
    ]
    return {
        split: {
            n: paired_bootstrap(
                counts["baseline"][split][n], counts["variant"][split][n], resamples
            )
            for n in changed
        }
        for split in ("test", "val")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        help="a folder holding oxford-iiit-pet/ (default: PETS_ROOT, data/, or synthetic)",
    )
    parser.add_argument(
        "--profile",
        choices=("smoke", "cpu", "full"),
        help="default: WORKBOOK_PROFILE, else cpu / full",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--baseline",
        nargs="*",
        default=[],
        metavar="FIELD=VALUE",
        help="overrides of the baseline (default: none)",
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        required=True,
        metavar="FIELD=VALUE",
        help="overrides of the variant",
    )
    parser.add_argument(
        "--settings", nargs="+", choices=("coarse", "converged"), default=["coarse", "converged"]
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help="only these stages of the settings and their base nets (default: every stage)",
    )
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument(
        "--runs-dir", help="where the checkpoints are (default: the repository's runs/)"
    )
    args = parser.parse_args(argv)

    from helpers.core.config import parse_overrides
    from helpers.workbook.stages import select

    try:
        baseline, variant = parse_overrides(args.baseline), parse_overrides(args.variant)
        # a misspelt stage is the parser's error, before any work
        select(args.settings, args.stages)
    except ValueError as err:
        parser.error(str(err))
    table = compare(
        baseline,
        variant,
        args.profile,
        args.data_root,
        args.seeds,
        args.settings,
        args.resamples,
        args.runs_dir,
        args.stages,
    )
    print(
        f"variant {variant} over baseline {baseline or 'the defaults'}, seeds "
        f"{', '.join(map(str, args.seeds))}: "
        "gain averaged over seeds [paired per-image bootstrap 95%]; * = the interval excludes 0"
    )
    if not table["test"]:
        print("no stage differs between the two configurations (the same checkpoints)")
    for split, rows in table.items():
        if not rows:
            continue
        print(f"\n{split} split")
        print(f"{'stage':22s} {'mIoU':>26s} {'Boundary IoU':>26s}")
        for name, b in rows.items():
            cell = lambda m: (
                f"{b[m]['gain']:+.3f} [{b[m]['low']:+.3f}, "
                f"{b[m]['high']:+.3f}]{'*' if b[m]['excludes_zero'] else ' '}"
            )  # noqa: E731
            print(f"{name:22s} {cell('miou'):>26s} {cell('boundary_iou'):>26s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
