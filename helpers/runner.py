"""``python -m helpers run``: execute the numbered notebooks in order, headless.

Executed copies go to ``runs/<profile>/``; the notebooks themselves add their stages to
``runs/<profile>/results.json``. A failing cell stops the run with the notebook and cell named.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from .config import PROFILES
from .data import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


FIGURE_DIR = NOTEBOOK_DIR / "figures"


def write_figures(args) -> int:
    """``python -m helpers figures``: the README's figures from the whole trained chain."""
    from .comparison import all_stages, save_readme_figures
    from .data import display_path
    from .workflow import open_workbook

    wb = open_workbook(args.profile, args.data_root, args.seed)
    if wb.source.kind != "synthetic":
        print("note: these figures show images of the dataset in use; do not commit figures of data you may not share")
    for path in save_readme_figures(wb, all_stages(wb, converged=False), Path(args.out)):
        print(f"wrote {display_path(path)}")
    return 0


class NotebookFailed(RuntimeError):
    pass


def numbered_notebooks(folder: Path | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in numeric order."""
    return sorted(p for p in (folder or NOTEBOOK_DIR).glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path: Path, out_dir: Path, timeout_s: int = 3600) -> float:
    """Execute one notebook with cwd = notebooks/; save the executed copy; return seconds."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(path.parent)}})
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # the kernel's own console chatter (ipykernel's transport warning, C-level messages) goes to a
    # log beside the executed notebook instead of the terminal; cell outputs are in the notebook
    log = open(out_dir / f"{path.stem}.kernel.log", "w")
    try:
        client.execute(stdout=log, stderr=log)
    except CellExecutionError as exc:
        cell = next((i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error"
                                                            for o in c.get("outputs", []))), None)
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()   # drop the traceback's colours
        first = text.splitlines()[-1] if text else type(exc).__name__
        raise NotebookFailed(f"{path.name}: cell {cell} failed: {first}") from None
    except DeadKernelError:
        raise NotebookFailed(f"{path.name}: the kernel died (out of memory?); its console output is in "
                             f"{path.stem}.kernel.log beside the executed notebook") from None
    finally:
        log.close()
    nbformat.write(nb, out_dir / path.name)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description="Run the workbook headless.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute the numbered notebooks in order and write results.json")
    run.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    run.add_argument("--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)")
    run.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    run.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    figures = sub.add_parser("figures", help="write the README's figures from the trained stages (trains what is missing)")
    figures.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    figures.add_argument("--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)")
    figures.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    figures.add_argument("--out", default=str(FIGURE_DIR), help="output folder (default: notebooks/figures)")
    args = parser.parse_args(argv)
    if args.command == "figures":
        return write_figures(args)

    from .config import default_profile

    if args.profile:
        os.environ["WORKBOOK_PROFILE"] = args.profile
    if args.data_root:
        root = Path(args.data_root).expanduser().resolve()
        if not (root / "oxford-iiit-pet").is_dir():
            parser.error(f"--data-root {args.data_root} does not hold an 'oxford-iiit-pet' folder")
        os.environ["PETS_ROOT"] = str(root)
    if args.seed is not None:
        os.environ["WORKBOOK_SEED"] = str(args.seed)
    profile = os.environ.setdefault("WORKBOOK_PROFILE", default_profile())
    notebooks = numbered_notebooks()
    if args.only:
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in args.only)]
    out_dir = REPO_ROOT / "runs" / profile
    print(f"profile {profile}, seed {os.environ.get('WORKBOOK_SEED', '0')}, "
          f"data {os.environ.get('PETS_ROOT', 'auto (data/ or synthetic)')}; {len(notebooks)} notebooks")
    for i, nb in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {nb.name} ...", flush=True)
        try:
            seconds = run_notebook(nb, out_dir)
        except NotebookFailed as exc:
            print(f"FAILED {exc}\nthe executed notebook with the error is in runs/{profile}/{nb.name}", file=sys.stderr)
            return 1
        print(f"      done in {seconds:.0f} s -> runs/{profile}/{nb.name}", flush=True)
    results = out_dir / "results.json"
    if results.exists():
        print(f"results: runs/{profile}/results.json")
        print(json.dumps({k: {m: v.get(m) for m in ('miou', 'pet_iou', 'boundary_iou')}
                          for k, v in json.loads(results.read_text())["stages"].items()}, indent=1))
    return 0
