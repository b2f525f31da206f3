"""Where each step's wrong pixels lie: binned by a distance, pooled over seeds.

For every stage of both settings this prints the % of all pixels wrong in each distance band
(:mod:`helpers.analysis.error_bands`), pooled over the seeds, per split; then, for the comparisons
that decide the claims (a refiner against the no-propagation control, the control and the base net
trained on against the base net), the difference per band and per seed, so a reader sees in
which band a gain was made and whether the seeds agree on it. ``--measure boundary`` (the
default) bins by the distance from the true boundary (an edge a little off, or a region taken
for the wrong class); ``--measure label`` by the distance to the nearest pixel the map gives
the pixel's true class: T iterations of reach r (CSPN 6 px, DySPN 18 px at T = 6) could fix an
error only within T x r of it.

    python benchmarks/error_bands.py --data-root ../shared/oxford-pets-sample --profile cpu --seeds
    0 1 2 python benchmarks/error_bands.py --data-root ../shared/oxford-pets-sample --profile cpu
    --measure label

Stages are loaded from the checkpoints the notebooks or ``benchmarks/quality.py`` wrote
(runs/<profile>/<data>-<digest>/seed<k>/); a missing one is trained first, as there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _seeds, also when loaded by path

from _seeds import seed_parser, seed_workbooks  # noqa: E402

# (after, before): the differences printed per band and seed
COMPARISONS = (
    ("dyspn", "control"),
    ("cspn", "control"),
    ("control", "coarse"),
    ("coarse-longer", "coarse"),
    ("converged+dyspn", "converged+control"),
    ("converged+cspn", "converged+control"),
    ("converged+control", "converged"),
    ("converged-longer", "converged"),
)


def band_differences(
    per_seed: dict[str, list[list[float]]], after: str, before: str
) -> list[list[float]]:
    """Per seed, the band-by-band difference of two stages' "% of all pixels wrong" rows."""
    return [
        [a - b for a, b in zip(row_a, row_b)]
        for row_a, row_b in zip(per_seed[after], per_seed[before])
    ]


def main(argv: list[str] | None = None) -> int:
    parser = seed_parser(__doc__)
    parser.add_argument(
        "--measure",
        choices=("boundary", "label"),
        default="boundary",
        help="bin wrong pixels by their distance from the true boundary, or by the distance to "
        "the nearest pixel the map gives their true class (what propagation would have to bridge)",
    )
    parser.add_argument("--json", help="also write the per-seed rows to this file")
    args = parser.parse_args(argv)

    from helpers.analysis.error_bands import band_labels, edges_with, error_bands, format_bands
    from helpers.models.propagation.propagators import CSPN, DySPN
    from helpers.workbook.stages import SETTINGS
    from helpers.workbook.workflow import run_stage

    names = [*SETTINGS["coarse"], *SETTINGS["converged"]]
    pooled, per_seed = {}, {}
    for k, wb in enumerate(seed_workbooks(parser, args)):
        if k == 0:  # T x reach of each propagator, from the run's configuration
            cfg = wb.cfg
            reach = {
                "CSPN": cfg.iterations * CSPN().reach,
                "DySPN": cfg.iterations
                * DySPN(kernel=cfg.dyspn_kernel, dilation=cfg.dyspn_dilation).reach,
            }
            edges = edges_with(*reach.values())
        for name in names:
            result = run_stage(wb, name, progress=False)
            for split, probs in (("val", result.val_probs), ("test", result.test_probs)):
                if not len(wb.data[split]):
                    continue
                bands = error_bands(
                    probs.argmax(1),
                    wb.data[split].targets,
                    probs.shape[1],
                    edges,
                    measure=args.measure,
                )
                key = (split, name)
                pooled[key] = pooled[key] + bands if key in pooled else bands
                per_seed.setdefault(split, {}).setdefault(name, []).append(
                    (100 * bands.share_of_pixels()).tolist()
                )

    seeds = ", ".join(map(str, args.seeds))
    labels = band_labels(edges)
    for split in per_seed:
        what = (
            "distance from the true boundary"
            if args.measure == "boundary"
            else "distance to the nearest pixel the map gives the true class"
        )
        print(
            f"\n== {split} split: % of all pixels wrong, by {what} (px), pooled over seeds {seeds}"
        )
        print(format_bands({name: pooled[(split, name)] for name in names}, reach))
        print(
            f"\n   differences per band, percentage points of all pixels (negative: fewer errors), "
            f"one row per seed; bands {' | '.join(labels)} | total"
        )
        for after, before in COMPARISONS:
            if after in per_seed[split] and before in per_seed[split]:
                print(f"   {after} - {before}:")
                for seed, row in zip(args.seeds, band_differences(per_seed[split], after, before)):
                    print(
                        f"      seed {seed}: "
                        + " ".join(f"{v:+.2f}" for v in row)
                        + f"  | {sum(row):+.2f}"
                    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "measure": args.measure,
                    "edges": list(edges),
                    "labels": labels,
                    "reach": reach,
                    "seeds": args.seeds,
                    "per_seed": per_seed,
                },
                indent=1,
            )
        )
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
