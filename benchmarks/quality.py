"""Quality of every refinement step on any folder in the official Oxford-IIIT Pet layout.

Trains (or loads) the whole chain for each seed, in two settings. The report's: the coarse
U-Net, the guided filter, the coarse U-Net trained on (equal-compute control), the refiner U-Net
without propagation (no-propagation control), CSPN and DySPN. And on a converged U-Net (trained
until its validation mIoU stops improving): the same controls and refiners on top of it.
Evaluates them on the validation split and on the official test split (where the folder has
one); prints a table per split with the mean and spread over seeds and the gain of each row over
its setting's base net, then the paired per-image bootstrap 95% interval of every gain that
decides a claim (a refiner over its base net, over the no-propagation control, over the base net
trained on; DySPN over CSPN), pooled over seeds; writes the same figures to a JSON file. Before
training it prints how long the run will take, from a timed training step of each model.

    python benchmarks/quality.py --profile cpu --seeds 0 1 2                     # synthetic default
    python benchmarks/quality.py --data-root ../shared/oxford-pets-sample --profile cpu --seeds 0 1
    2
    python benchmarks/quality.py --profile cpu --seeds 0 1 2 --set perturb=0      # a tuning variant
    # two stages (and their base)
    python benchmarks/quality.py --profile cpu --settings coarse --stages control dyspn

Both the validation split (where the guided filter and the converged net's stopping epoch are
chosen) and the test split (held out from every choice) are reported.

Checkpoints go where the notebooks put theirs (runs/<profile>/<data>-<digest>/seed<k>/): a stage the
notebooks already trained is loaded, not trained again, and the other way round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("miou", "pet_iou", "boundary_iou")


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        "threads, "
        f"torch {torch.__version__}"
    )


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Mean and spread over seeds of every metric, and of the gain over the row's base net
    (``base`` of the row: the coarse U-Net, or the converged one in that setting)."""
    seeds = list(per_seed)
    out = []
    for k, first in enumerate(per_seed[seeds[0]]):
        rows = [per_seed[s][k] for s in seeds]
        base_name = first.get("base", per_seed[seeds[0]][0]["stage"])
        bases = [next(r for r in per_seed[s] if r["stage"] == base_name) for s in seeds]
        entry = {
            "stage": first["stage"],
            "label": first["label"],
            "parameters": first["parameters"],
            "base": base_name,
        }
        for m in METRICS:
            entry[m] = spread([r[m] for r in rows])
            entry[f"gain_{m}"] = spread([r[m] - c[m] for r, c in zip(rows, bases)])
        entry["train_seconds"] = spread([r["train_seconds"] for r in rows])
        entry["ms_per_image"] = spread([r["ms_per_image"] for r in rows])
        out.append(entry)
    return out


def format_summary(summary: list[dict]) -> str:
    pm = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    lines = [
        f"{'':42s} {'mIoU':>13s} {'pet IoU':>13s} {'Boundary IoU':>13s} {'mIoU gain':>14s} "
        f"{'BIoU gain':>14s} {'params':>9s} {'train s':>7s} {'ms/img':>6s}"
    ]
    for e in summary:
        lines.append(
            f"{e['label']:42s} {pm(e['miou']):>13s} {pm(e['pet_iou']):>13s} "
            f"{pm(e['boundary_iou']):>13s} "
            f"{e['gain_miou'][0]:+7.3f} ±{e['gain_miou'][1]:.3f} {e['gain_boundary_iou'][0]:+7.3f} "
            f"±{e['gain_boundary_iou'][1]:.3f} {e['parameters']:9,d} {e['train_seconds'][0]:7.0f} "
            f"{e['ms_per_image'][0]:6.1f}"
        )
    return "\n".join(lines)


def comparisons(stages: list[str]) -> list[tuple[str, str]]:
    """(after, before) pairs whose gain decides a claim: every stage over its base net; each
    refiner over its setting's no-propagation control and over the base net trained on; DySPN
    over CSPN; the converged net over the coarse net trained on."""
    from helpers.workbook.results import base_of
    from helpers.workbook.stages import stage_name

    pairs = [(s, base_of(s)) for s in stages if s != base_of(s)]
    for base in dict.fromkeys(base_of(s) for s in stages):
        names = {what: stage_name(base, what) for what in ("control", "cspn", "dyspn", "longer")}
        for method in ("cspn", "dyspn"):
            for other in ("control", "longer"):
                if names[method] in stages and names[other] in stages:
                    pairs.append((names[method], names[other]))
        if names["cspn"] in stages and names["dyspn"] in stages:
            pairs.append((names["dyspn"], names["cspn"]))
    # is the converged net better than the coarse one trained on for as long as a refiner?
    if "converged" in stages and "coarse-longer" in stages:
        pairs.append(("converged", "coarse-longer"))
    return pairs


def bootstrap_table(
    counts: dict[int, dict[str, tuple]], stages: list[str], resamples: int = 2000
) -> list[dict]:
    """Paired bootstrap of every gain of :func:`comparisons`; ``counts[seed][stage]`` holds the
    per-image counts (``StageResult.val_counts`` / ``test_counts``) of one split."""
    from helpers.analysis.statistics import paired_bootstrap

    seeds = list(counts)
    rows = []
    for after, before in comparisons(stages):
        result = paired_bootstrap(
            [counts[s][before] for s in seeds], [counts[s][after] for s in seeds], resamples
        )
        rows.append({"after": after, "before": before, **{m: result[m] for m in METRICS}})
    return rows


def format_bootstrap(rows: list[dict]) -> str:
    ci = lambda r: (
        f"{r['gain']:+.3f} [{r['low']:+.3f}, "
        f"{r['high']:+.3f}]{' *' if r['excludes_zero'] else '  '}"
    )  # noqa: E731
    lines = [f"{'gain of':42s} {'mIoU':>27s} {'pet IoU':>27s} {'Boundary IoU':>27s}"]
    for r in rows:
        lines.append(
            f"{r['after'] + ' over ' + r['before']:42s} "
            + " ".join(f"{ci(r[m]):>27s}" for m in METRICS)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--data-root",
        help="a folder holding oxford-iiit-pet/ (default: PETS_ROOT, data/, or synthetic)",
    )
    parser.add_argument(
        "--profile",
        choices=("smoke", "cpu", "full"),
        help="default: WORKBOOK_PROFILE, else cpu / full",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to train and pool"
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=("coarse", "converged"),
        default=["coarse", "converged"],
        help="refine the minimally trained coarse U-Net, a converged one, or both",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        metavar="STAGE",
        help="only these stages of the settings and their base nets, e.g. control dyspn "
        "(default: every stage)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        dest="overrides",
        help="configuration overrides, e.g. coarse_size=64 refine_lr=1e-3 (a tuning variant)",
    )
    parser.add_argument(
        "--resamples", type=int, default=2000, help="bootstrap resamples of the images"
    )
    parser.add_argument(
        "--json",
        help="output file (default: "
        "<runs-dir>/<profile>/quality-<data>[-<overrides>]-seeds<...>.json)",
    )
    parser.add_argument(
        "--runs-dir", help="where checkpoints and the JSON go (default: the repository's runs/)"
    )
    args = parser.parse_args(argv)
    # the whole run: data decoding, the estimate, training, evaluation
    started = time.perf_counter()

    from helpers.core.checkpoint import atomic_write_text, display_path, file_slug
    from helpers.core.config import parse_overrides
    from helpers.workbook.results import comparison_rows
    from helpers.workbook.session import open_workbook
    from helpers.workbook.stages import select
    from helpers.workbook.timing import estimate_seconds
    from helpers.workbook.workflow import all_stages

    if args.data_root and not (Path(args.data_root).expanduser() / "oxford-iiit-pet").is_dir():
        parser.error(f"--data-root {args.data_root} does not hold an 'oxford-iiit-pet' folder")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        parser.error(str(err))
    converged = "converged" in args.settings
    try:
        names = list(select(args.settings, args.stages))
    except ValueError as err:
        parser.error(str(err))
    folders = {"runs_dir": Path(args.runs_dir)} if args.runs_dir else {}
    books = [
        open_workbook(args.profile, args.data_root, seed, verbose=(k == 0), **folders, **overrides)
        for k, seed in enumerate(args.seeds)
    ]
    wb0 = books[0]
    splits = ("val", "test") if len(wb0.data["test"]) else ("val",)
    if splits == ("val",):
        print("this folder has no test images: reporting the validation split only")
    if overrides:
        print(f"overrides: {overrides}")
    print(f"machine: {machine()}")
    estimates = [estimate_seconds(wb, converged) for wb in books]
    total = sum(e[s] for e in estimates for s in names)
    per_stage = {s: sum(e[s] for e in estimates) for s in names}
    if total:
        print(
            f"estimated training time: at most about {total / 60:.1f} min for {len(books)} seed(s) "
            f"({', '.join(f'{s} {v / 60:.1f}' for s, v in per_stage.items())} min; stages already "
            "trained load in seconds)",
            flush=True,
        )
    else:  # an estimate of "0.0 min" next to minutes of evaluation would read as a bug
        print(
            f"every stage is already trained for {len(books)} seed(s): loading and evaluating only",
            flush=True,
        )

    t0 = time.perf_counter()
    per_seed = {split: {} for split in splits}
    counts = {split: {} for split in splits}
    for wb in books:
        print(f"--- seed {wb.cfg.seed}", flush=True)
        wall = {}
        stages = all_stages(wb, converged=converged, wall_seconds=wall, only=names)
        print(
            "wall-clock seconds per stage (training or loading, and evaluation): "
            + ", ".join(f"{s} {wall[s]:.0f}" for s in names),
            flush=True,
        )
        rows = comparison_rows(wb, stages, "val")  # times inference once
        per_seed["val"][wb.cfg.seed] = rows
        if "test" in splits:
            per_seed["test"][wb.cfg.seed] = [
                {**row, **stages[row["stage"]].test_metrics} for row in rows
            ]
        for split in splits:  # the per-image counts each stage was scored with
            counts[split][wb.cfg.seed] = {
                s: r.val_counts if split == "val" else r.test_counts for s, r in stages.items()
            }
    elapsed = time.perf_counter() - t0

    summary = {split: summarise(rows) for split, rows in per_seed.items()}
    intervals = {split: bootstrap_table(counts[split], names, args.resamples) for split in splits}
    for split in splits:
        print(
            f"\n{wb0.source.name}, profile {wb0.cfg.profile}, {split} split "
            f"({len(wb0.data[split])} images), "
            f"seeds {', '.join(map(str, args.seeds))}: mean ± sample standard deviation over "
            "seeds; "
            "gains over each setting's base net"
        )
        print(format_summary(summary[split]))
        print(
            f"\npaired per-image bootstrap, {split} split: gain averaged over seeds [95% interval "
            "over "
            f"{args.resamples} resamples of the images]; * = the interval excludes 0"
        )
        print(format_bootstrap(intervals[split]))
    whole_run = time.perf_counter() - started
    estimated = (
        f"estimated at most {total / 60:.1f} min of training; " if total else "nothing trained; "
    )
    print(
        f"(training and evaluation took {elapsed / 60:.1f} min, {estimated}the whole run "
        f"{whole_run / 60:.1f} min)"
    )

    variant = "".join(f"-{k}={v}" for k, v in overrides.items()) + (
        "-" + "-".join(args.stages) if args.stages else ""
    )
    seeds = "-seeds" + "-".join(map(str, args.seeds))
    slug = file_slug(wb0.source.name + variant + seeds)
    out = Path(args.json) if args.json else wb0.profile_dir / f"quality-{slug}.json"
    doc = {
        "data_source": wb0.data_id,
        "profile": wb0.cfg.profile,
        "overrides": overrides,
        "config": wb0.cfg.to_dict(),
        "images": {s: len(wb0.data[s]) for s in splits},
        "train_images": len(wb0.data["train"]),
        "seeds": args.seeds,
        "settings": args.settings,
        "stages": names,
        "machine": machine(),
        "seconds": round(elapsed, 1),
        "estimated_seconds": round(total, 1),
        "whole_run_seconds": round(whole_run, 1),
        "command": "python benchmarks/quality.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary,
        "bootstrap": intervals,
        "per_seed": {
            split: {str(k): v for k, v in rows.items()} for split, rows in per_seed.items()
        },
    }
    atomic_write_text(json.dumps(doc, indent=2), out)
    print(f"wrote {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
