"""Tuning variants of the quality benchmark, several seeds each, run as parallel processes.

Each variant is a list of ``FIELD=VALUE`` overrides of :class:`helpers.core.config.Config` (one
string per variant, fields separated by spaces). On a machine with many cores and a GPU the
seeds and variants train side by side, one process each (one torch thread per process, so they
do not fight for cores); on the 2-core CPU machine use ``--jobs 1``.

    python benchmarks/sweep.py --data-root DIR --profile cpu --seeds 0 1 2 --jobs 12 \\
        --variant "" --variant "perturb=0.5" --variant "perturb=0.5 deep_supervision=true"

Phases: 1. one process per seed and per distinct *base* (variants that differ only in refiner
settings share their coarse and converged U-Nets), so that no two processes train the same
checkpoint; 2. every other (variant, seed); 3. per variant, ``benchmarks/quality.py`` over all
seeds, which loads every stage and prints the tables and paired bootstrap intervals (written to
``runs/<profile>/quality-*.json``). Each process's console goes to ``runs/<profile>/sweep-logs/``.
Quality only: timings from processes sharing a machine are not comparable.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the fields that decide the coarse and converged U-Nets (see helpers.workbook.stages.Stage.spec)
BASE_FIELDS = {
    "image_size",
    "coarse_size",
    "coarse_width",
    "coarse_depth",
    "coarse_epochs",
    "coarse_lr",
    "coarse_min_steps",
    "batch_size",
    "val_fraction",
    "max_train",
    "max_eval",
    "augment",
    "converged_max_epochs",
    "converged_patience",
    "weight_decay",
}


def base_key(variant: str) -> tuple:
    """The overrides of ``variant`` that change its base nets."""
    pairs = [p for p in variant.split() if p.partition("=")[0] in BASE_FIELDS]
    return tuple(sorted(pairs))


def quality_command(args, variant: str, seeds: list[int]) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--profile",
        args.profile,
        "--seeds",
        *map(str, seeds),
        "--settings",
        *args.settings,
        "--resamples",
        str(args.resamples),
    ]
    if args.data_root:
        cmd += ["--data-root", args.data_root]
    if variant.split():
        cmd += ["--set", *variant.split()]
    return cmd


def run_all(jobs: list[tuple[str, list[str]]], workers: int, logs: Path) -> list[int]:
    """Run (name, command) pairs, ``workers`` at a time; each one's output to
    ``logs/<name>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def one(job):
        name, cmd = job
        t0 = time.perf_counter()
        with open(logs / f"{name}.log", "w") as log:
            rc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            ).returncode
        print(f"  {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        return rc

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-root", help="a folder holding oxford-iiit-pet/")
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "full"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--settings", nargs="+", choices=("coarse", "converged"), default=["coarse", "converged"]
    )
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help='overrides of one variant, e.g. "perturb=0.5 boundary_weight=4" ("" = the defaults)',
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes at a time")
    parser.add_argument("--resamples", type=int, default=2000)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # the workbook, installed or not
    from helpers.core.checkpoint import file_slug

    logs = ROOT / "runs" / args.profile / "sweep-logs"
    logs.mkdir(parents=True, exist_ok=True)
    slug = lambda v: file_slug(v.strip(), "_", keep="=") or "defaults"  # noqa: E731
    first, rest, seen = [], [], set()
    for variant in args.variant:
        for seed in args.seeds:
            job = (f"{slug(variant)}-seed{seed}", quality_command(args, variant, [seed]))
            (rest if (base_key(variant), seed) in seen else first).append(job)
            seen.add((base_key(variant), seed))
    t0 = time.perf_counter()
    print(f"phase 1: {len(first)} processes (one per base and seed)", flush=True)
    codes = run_all(first, args.jobs, logs)
    print(f"phase 2: {len(rest)} processes", flush=True)
    codes += run_all(rest, args.jobs, logs)
    print("phase 3: tables over all seeds", flush=True)
    codes += run_all(
        [(f"{slug(v)}-all", quality_command(args, v, args.seeds)) for v in args.variant],
        args.jobs,
        logs,
    )
    print(f"sweep took {(time.perf_counter() - t0) / 60:.1f} min; logs in {logs.relative_to(ROOT)}")
    return int(any(codes))


if __name__ == "__main__":
    sys.exit(main())
