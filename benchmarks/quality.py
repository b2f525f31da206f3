"""Quality of every refinement step on any folder in the official Oxford-IIIT Pet layout.

Trains (or loads) the whole chain for each seed: the coarse U-Net, the guided filter, the coarse
U-Net trained on (equal-compute control), the refiner U-Net without propagation, CSPN and DySPN;
evaluates them on the validation split and on the official test split (where the folder has
one); prints a table per split with the mean and spread over seeds and the gains over the
coarse map, and writes the same figures to a JSON file. Before training it prints how
long the run will take, from a timed training step of each model.

    python benchmarks/quality.py --profile cpu --seeds 0 1                       # synthetic default
    python benchmarks/quality.py --data-root ../shared/oxford-pets-sample --profile cpu --seeds 0 1
    python benchmarks/quality.py --profile cpu --seeds 0 1 --set coarse_size=64   # a tuning variant

Both the validation split (where the workbook's quality criteria are stated and the guided
filter is tuned) and the test split (held out from every choice) are reported.

Checkpoints go where the notebooks put theirs (runs/<profile>/<data>/seed<k>/): a stage the
notebooks already trained is loaded, not trained again, and the other way round.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
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
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}")


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Mean and spread over seeds of every metric, and of the gain over the coarse map."""
    seeds = list(per_seed)
    out = []
    for k, first in enumerate(per_seed[seeds[0]]):
        rows = [per_seed[s][k] for s in seeds]
        coarse = [per_seed[s][0] for s in seeds]
        entry = {"stage": first["stage"], "label": first["label"], "parameters": first["parameters"]}
        for m in METRICS:
            entry[m] = spread([r[m] for r in rows])
            entry[f"gain_{m}"] = spread([r[m] - c[m] for r, c in zip(rows, coarse)])
        entry["train_seconds"] = spread([r["train_seconds"] for r in rows])
        entry["ms_per_image"] = spread([r["ms_per_image"] for r in rows])
        out.append(entry)
    return out


def format_summary(summary: list[dict]) -> str:
    pm = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"                     # noqa: E731
    lines = [f"{'':30s} {'mIoU':>13s} {'pet IoU':>13s} {'Boundary IoU':>13s} {'mIoU gain':>14s} "
             f"{'BIoU gain':>14s} {'params':>9s} {'train s':>7s} {'ms/img':>6s}"]
    for e in summary:
        lines.append(f"{e['label']:30s} {pm(e['miou']):>13s} {pm(e['pet_iou']):>13s} {pm(e['boundary_iou']):>13s} "
                     f"{e['gain_miou'][0]:+7.3f} ±{e['gain_miou'][1]:.3f} {e['gain_boundary_iou'][0]:+7.3f} "
                     f"±{e['gain_boundary_iou'][1]:.3f} {e['parameters']:9,d} {e['train_seconds'][0]:7.0f} "
                     f"{e['ms_per_image'][0]:6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", help="a folder holding oxford-iiit-pet/ (default: PETS_ROOT, data/, or synthetic)")
    parser.add_argument("--profile", choices=("smoke", "cpu", "full"), help="default: WORKBOOK_PROFILE, else cpu / full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="overrides",
                        help="configuration overrides, e.g. coarse_size=64 refine_lr=1e-3 (a tuning variant)")
    parser.add_argument("--json", help="output file (default: runs/<profile>/quality-<data>[-<overrides>].json)")
    args = parser.parse_args(argv)

    from helpers.comparison import STAGES, all_stages, comparison_rows, estimate_seconds
    from helpers.config import parse_overrides
    from helpers.data import display_path
    from helpers.workflow import RUNS_DIR, open_workbook

    if args.data_root and not (Path(args.data_root).expanduser() / "oxford-iiit-pet").is_dir():
        parser.error(f"--data-root {args.data_root} does not hold an 'oxford-iiit-pet' folder")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as err:
        parser.error(str(err))
    books = [open_workbook(args.profile, args.data_root, seed, verbose=(k == 0), **overrides)
             for k, seed in enumerate(args.seeds)]
    wb0 = books[0]
    splits = ("val", "test") if len(wb0.data["test"]) else ("val",)
    if splits == ("val",):
        print("this folder has no test images: reporting the validation split only")
    if overrides:
        print(f"overrides: {overrides}")
    print(f"machine: {machine()}")
    estimates = [estimate_seconds(wb) for wb in books]
    total = sum(sum(e.values()) for e in estimates)
    per_stage = {s: sum(e[s] for e in estimates) for s in STAGES if s in estimates[0]}
    print(f"estimated training time: about {total / 60:.0f} min for {len(books)} seed(s) "
          f"({', '.join(f'{s} {v / 60:.1f}' for s, v in per_stage.items())} min; stages already trained load in seconds)",
          flush=True)

    t0 = time.perf_counter()
    per_seed = {split: {} for split in splits}
    for wb in books:
        print(f"--- seed {wb.cfg.seed}", flush=True)
        stages = all_stages(wb)
        rows = comparison_rows(wb, {s: stages[s] for s in STAGES}, "val")   # times inference once
        per_seed["val"][wb.cfg.seed] = rows
        if "test" in splits:
            per_seed["test"][wb.cfg.seed] = [{**row, **stages[row["stage"]].test_metrics} for row in rows]
    elapsed = time.perf_counter() - t0

    summary = {split: summarise(rows) for split, rows in per_seed.items()}
    for split in splits:
        print(f"\n{wb0.source.name}, profile {wb0.cfg.profile}, {split} split ({len(wb0.data[split])} images), "
              f"seeds {', '.join(map(str, args.seeds))}: mean ± sample standard deviation over seeds")
        print(format_summary(summary[split]))
    print(f"(took {elapsed / 60:.1f} min; estimated {total / 60:.0f} min)")

    variant = "".join(f"-{k}={v}" for k, v in overrides.items())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", wb0.source.name + variant)   # a file name that every system accepts
    out = Path(args.json) if args.json else RUNS_DIR / wb0.cfg.profile / f"quality-{slug}.json"
    doc = {"data_source": wb0.source.name, "profile": wb0.cfg.profile, "overrides": overrides,
           "config": wb0.cfg.to_dict(), "images": {s: len(wb0.data[s]) for s in splits},
           "train_images": len(wb0.data["train"]), "seeds": args.seeds,
           "machine": machine(), "seconds": round(elapsed, 1), "estimated_seconds": round(total, 1),
           "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "summary": summary, "per_seed": {split: {str(k): v for k, v in rows.items()} for split, rows in per_seed.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out)
    print(f"wrote {display_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
