"""``python -m helpers ...``: the command line (``run``, ``doctor``, ``figures``, ``assignment``,
``grade``, ``references``); each command's work lives in its own module.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.config import PROFILES, check_settings
from . import course
from .run import NOTEBOOK_DIR, run_command

FIGURE_DIR = NOTEBOOK_DIR / "figures"


def write_figures(args) -> int:
    """``python -m helpers figures``: the README's figures from the whole trained chain."""
    from ..core.checkpoint import display_path
    from ..workbook.figures import save_readme_figures
    from ..workbook.session import open_workbook
    from ..workbook.workflow import all_stages

    wb = open_workbook(args.profile, args.data_root, args.seed)
    if wb.source.kind != "synthetic":
        print(
            "note: these figures show images of the dataset in use; do not commit figures of data "
            "you may not share"
        )
    for path in save_readme_figures(wb, all_stages(wb, converged=False), Path(args.out)):
        print(f"wrote {display_path(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers", description="Run the workbook headless."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="execute the numbered notebooks in order and write results.json"
    )
    run.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    run.add_argument("--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)")
    run.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    run.add_argument(
        "--only", nargs="+", help="run only notebooks whose name starts with these prefixes"
    )
    run.add_argument(
        "--cell-timeout", type=int, default=3600, help="seconds one cell may run (default 3600)"
    )
    run.add_argument(
        "--budget",
        metavar="MINUTES",
        help="fit the training still to do into MINUTES by training a share of the refiners' "
        "and the converged net's epochs (overrides WORKBOOK_BUDGET; recorded in results.json)",
    )
    run.add_argument(
        "--set",
        nargs="+",
        metavar="FIELD=VALUE",
        help="configuration overrides, e.g. refine_epochs=6 (recorded in results.json)",
    )
    figures = sub.add_parser(
        "figures",
        help="write the README's figures from the trained stages (trains what is missing)",
    )
    figures.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    figures.add_argument(
        "--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)"
    )
    figures.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    figures.add_argument(
        "--out", default=str(FIGURE_DIR), help="output folder (default: notebooks/figures)"
    )
    doctor = sub.add_parser(
        "doctor", help="what this machine will do: software, GPU, precision, profile, data, plan"
    )
    doctor.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    doctor.add_argument(
        "--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)"
    )
    doctor.add_argument(
        "--no-plan", action="store_true", help="skip the data and the timed training plan"
    )
    course.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command in course.COMMANDS:
        return course.run(args, parser)
    if args.command == "doctor":
        from .doctor import doctor_command

        try:
            return doctor_command(args)
        except ValueError as exc:
            doctor.error(str(exc))
    if args.command == "figures":
        from ..core.checkpoint import CheckpointError
        from ..data.sources import DataError
        from ..training.loop import TrainingDiverged

        try:
            check_settings(
                args.profile or os.environ.get("WORKBOOK_PROFILE") or "cpu",
                str(args.seed) if args.seed is not None else os.environ.get("WORKBOOK_SEED", "0"),
            )
            return write_figures(args)
        except (ValueError, DataError, CheckpointError, TrainingDiverged) as exc:
            figures.error(str(exc))  # one line and argparse's exit status 2, not a traceback
    return run_command(args, run)
