"""What the benchmarks that pool trained stages over seeds share: their common options and the
workbook of each seed (``error_bands.py``, ``propagate_control.py``, ``from_control.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def seed_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with ``--data-root``, ``--profile``,
    ``--seeds`` and ``--runs-dir``; a script adds its own options."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to pool")
    parser.add_argument(
        "--runs-dir", help="where the checkpoints are (default: the repository's runs/)"
    )
    return parser


def seed_workbooks(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The workbook of each of ``args.seeds`` in turn (the data source printed for the first);
    a ``--data-root`` without an ``oxford-iiit-pet`` folder is the parser's error, before any
    work."""
    from helpers.workbook.session import open_workbook

    if args.data_root and not (Path(args.data_root).expanduser() / "oxford-iiit-pet").is_dir():
        parser.error(f"--data-root {args.data_root} does not hold an 'oxford-iiit-pet' folder")
    folders = {"runs_dir": Path(args.runs_dir)} if args.runs_dir else {}
    for k, seed in enumerate(args.seeds):
        yield open_workbook(args.profile, args.data_root, seed, verbose=(k == 0), **folders)
