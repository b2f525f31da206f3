"""``python -m helpers run``: execute the numbered notebooks in order, headless.

Executed copies go to ``runs/<profile>/``; the notebooks themselves add their stages to
``runs/<profile>/results.json``. A failing cell stops the run with the notebook and cell named.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core import progress
from ..core.checkpoint import REPO_ROOT
from ..core.config import check_settings, parse_budget, parse_overrides, profile_config
from .execute import NotebookFailed, in_worker, kill_kernel, run_notebook

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def numbered_notebooks(folder: Path | None = None) -> list[Path]:
    """notebooks/NN_*.ipynb in numeric order."""
    return sorted(p for p in (folder or NOTEBOOK_DIR).glob("[0-9][0-9]_*.ipynb"))


def estimate_cpu_hours(profile: str) -> float:
    """Rough hours the whole workbook needs in ``profile`` on this machine's CPU, from one timed
    training step of the coarse U-Net and of each refiner on random images of the profile's
    size (batch of 2, scaled to the profile's batch and epochs). Used to warn before a run."""
    import torch

    from ..core.config import load_config
    from ..models.refiner import CoarseSegmenter, Refiner
    from ..workbook.stages import epochs_for
    from ..workbook.timing import step_seconds

    cfg = load_config(profile, device="cpu")
    n_train = round(cfg.synthetic_trainval * (1 - cfg.val_fraction))
    if cfg.pets_root:
        from ..data.decoding import read_split_ids

        n_train = round(
            len(read_split_ids(Path(cfg.pets_root), "trainval.txt")) * (1 - cfg.val_fraction)
        )
    if cfg.max_train:
        n_train = min(n_train, cfg.max_train)
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    targets = torch.randint(0, 2, (2, cfg.image_size, cfg.image_size))
    coarse = CoarseSegmenter.from_config(cfg)
    steps_per_epoch = -(-n_train // cfg.batch_size) * cfg.batch_size / 2
    coarse_epochs = epochs_for(cfg.coarse_epochs, cfg.coarse_min_steps, n_train, cfg.batch_size)
    refine_epochs = epochs_for(cfg.refine_epochs, cfg.refine_min_steps, n_train, cfg.batch_size)
    seconds = (
        step_seconds(coarse, images, targets) * (coarse_epochs + refine_epochs) * steps_per_epoch
    )
    for method in ("control", "cspn", "dyspn"):
        refiner = Refiner.from_config(cfg, coarse, method)
        seconds += step_seconds(refiner, images, targets) * refine_epochs * steps_per_epoch
    return seconds / 3600


def _print_results(results: Path, profile: str, started: float) -> None:
    from ..workbook.results import read_results

    doc = read_results(results)
    if doc is None:
        return
    print(
        f"results: runs/{profile}/results.json ({doc.get('data_source')}, seed {doc.get('seed')})"
    )
    old = []
    for name, row in doc["stages"].items():
        mark = " *" if row.get("recorded_at", 0) < started else ""
        old += [name] if mark else []
        print(
            f"  {name:22s} "
            + "  ".join(
                f"{m} {row.get(m, float('nan')):.3f}" for m in ("miou", "pet_iou", "boundary_iou")
            )
            + mark
        )
    if old:
        print(
            f"  * recorded by an earlier run, not this one ({len(old)} of {len(doc['stages'])} "
            "stages)"
        )


PLAN = (
    "import sys\n"
    "from helpers.workbook.plan import plan_lines\n"
    "from helpers.workbook.session import open_workbook\n"
    "try:\n"
    "    lines = plan_lines(open_workbook(verbose=False))\n"
    "except Exception as exc:  # the notebooks will say it in their words; the plan is a courtesy\n"
    "    lines = [f'plan: not estimated ({type(exc).__name__}: {exc})']\n"
    "print('\\n'.join(lines), flush=True)\n"
)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def print_plan() -> None:
    """Before anything trains: the stages still to train, each with its estimated time on this
    machine (timed steps), and the total (:func:`helpers.workbook.plan.plan_lines`), and what a
    budget chose (saved for the kernels to reuse). In a process of its own, so that this one
    holds no GPU memory while the notebooks run; it reads the run's settings from the
    environment, as the notebooks do."""
    try:
        subprocess.run([sys.executable, "-c", PLAN], cwd=REPO_ROOT, check=False, timeout=PLAN_S)
    except subprocess.TimeoutExpired:
        print(f"plan: not estimated (timing the steps took over {PLAN_S} s)", flush=True)


PLAN_S = 300  # the plan is a courtesy: it never holds a run up for long


def run_command(args, run: argparse.ArgumentParser) -> int:
    """``python -m helpers run``: the numbered notebooks in order (``run`` reports usage errors)."""
    from ..core.config import default_profile
    from ..data.sources import DataError, locate_root
    from ..workbook.plan import PLANNED_ENV

    os.environ.setdefault("WORKBOOK_START_DIR", os.getcwd())
    if args.profile:
        os.environ["WORKBOOK_PROFILE"] = args.profile
    if args.seed is not None:
        os.environ["WORKBOOK_SEED"] = str(args.seed)
    if args.set:
        os.environ["WORKBOOK_SET"] = " ".join(args.set)  # the notebooks' kernels read it
    if args.budget is not None:
        os.environ["WORKBOOK_BUDGET"] = args.budget  # so do the plan and the kernels
    try:
        parse_budget(
            os.environ.get("WORKBOOK_BUDGET"),
            "--budget" if args.budget is not None else "WORKBOOK_BUDGET",
        )
        profile, seed = check_settings(
            os.environ.get("WORKBOOK_PROFILE") or default_profile(),
            os.environ.get("WORKBOOK_SEED", "0"),
        )
        try:  # the types, then the values (a share out of range) before any notebook starts
            profile_config(profile, **parse_overrides(os.environ.get("WORKBOOK_SET", "").split()))
        except ValueError as exc:
            raise ValueError(f"--set (WORKBOOK_SET): {exc}") from None
        # the kernels run in notebooks/: hand them an absolute data folder, resolved from here
        what, root = (
            ("--data-root", args.data_root)
            if args.data_root is not None
            else ("PETS_ROOT", os.environ.get("PETS_ROOT"))
        )
        if root is not None:
            os.environ["PETS_ROOT"] = str(locate_root(root, what))
    except (ValueError, DataError) as exc:
        run.error(str(exc))  # the usage line of `run`, not of the top-level command
    os.environ["WORKBOOK_PROFILE"] = profile
    notebooks = numbered_notebooks()
    if args.only:
        notebooks = [p for p in notebooks if any(p.name.startswith(o) for o in args.only)]
        if not notebooks:
            run.error(
                f"--only {' '.join(args.only)} matches no notebook; the notebooks are "
                + ", ".join(p.stem for p in numbered_notebooks())
            )
    if profile == "full":
        if not gpu_available():
            print(
                "warning: profile full without a GPU; timing one training step of each model ...",
                flush=True,
            )
            hours = estimate_cpu_hours(profile)
            print(
                f"warning: the full profile would take about {hours:.0f} hours on this CPU "
                "(it is the GPU profile); stop with Ctrl-C and use --profile cpu (about 45 "
                "minutes on two cores)",
                flush=True,
            )
    out_dir = REPO_ROOT / "runs" / profile
    print(
        f"profile {profile}, seed {seed}, data "
        f"{os.environ.get('PETS_ROOT', 'auto (data/ or synthetic)')}; "
        f"{len(notebooks)} notebooks"
    )
    if not (profile == "full" and not gpu_available()):  # that case was warned about above
        print_plan()
    started = time.time()
    stop = {"signal": None, "client": None}

    def interrupt(signum, frame):
        # Ctrl-C and SIGTERM (a closed terminal, a job scheduler): stop the kernel, then end
        # with one line instead of nbclient's tracebacks
        stop["signal"] = signal.Signals(signum).name
        kill_kernel(stop["client"])

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, interrupt)
        # not the main thread (an embedding application): leave its signals alone
        except ValueError:
            pass
    current = None
    saved_env = {
        k: os.environ.get(k) for k in (progress.HEADLESS_ENV, progress.PROGRESS_ENV, PLANNED_ENV)
    }
    # the plan was printed here (or deliberately not): the kernels never time the steps for it
    # again, without the time limit it had here
    os.environ[PLANNED_ENV] = "1"
    try:
        for i, nb in enumerate(notebooks, 1):
            if stop["signal"]:  # interrupted between two notebooks: start no other
                break
            current = nb
            print(f"[{i}/{len(notebooks)}] {nb.name} ...", flush=True)
            events = out_dir / f"{nb.stem}.progress.jsonl"
            out_dir.mkdir(parents=True, exist_ok=True)
            events.write_text("")
            # the kernel inherits these: no widget bars in the saved notebook, epochs reported to
            # the file
            os.environ[progress.HEADLESS_ENV], os.environ[progress.PROGRESS_ENV] = "1", str(events)
            follow = _follower(events)

            def on_wait():
                if stop["signal"]:
                    # again on every wait: the kernel may still be starting
                    kill_kernel(stop["client"])
                follow()

            outcome = in_worker(
                run_notebook,
                nb,
                out_dir,
                args.cell_timeout,
                lambda client: stop.__setitem__("client", client),
                on_wait=on_wait,
            )
            if stop["signal"]:
                break
            if isinstance(outcome, NotebookFailed):
                print(f"FAILED {outcome}", file=sys.stderr)
                return 1
            if isinstance(outcome, BaseException):
                raise outcome
            print(f"      done in {outcome:.0f} s -> runs/{profile}/{nb.name}", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for key, value in saved_env.items():  # leave the caller's environment as it was
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if stop["signal"]:
        where = (
            f"during {current.name}: its kernel was stopped"
            if current
            else "before the first notebook"
        )
        print(
            f"\ninterrupted ({stop['signal']}) {where}; finished epochs are checkpointed and "
            "resume on the next "
            f"run; notebooks executed before it are in runs/{profile}/",
            file=sys.stderr,
        )
        # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
        return 128 + getattr(signal, stop["signal"])
    _print_results(out_dir / "results.json", profile, started)
    return 0


def _follower(path: Path):
    """A callable that prints the training epochs appended to ``path`` since its last call."""
    state = {"offset": 0}

    def show():
        events, state["offset"] = progress.follow(path, state["offset"])
        for event in events:
            print("      " + progress.describe(event), flush=True)

    return show
