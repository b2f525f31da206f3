"""How long grading takes: N copies of the solved hand-out (and as many blank ones) graded with
``--jobs 1`` and ``--jobs J``, side by side in one run, per submission and extrapolated to 200.

    python benchmarks/grading.py                     # 10 submissions, jobs 1 and 2
    python benchmarks/grading.py --count 20 --jobs 2 4

Prints the machine (CPU count, torch threads) with the times; writes nothing but a temporary
folder. Timings only mean something with nothing else running.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpers.course.edition import make_student_edition, solved_copy  # noqa: E402
from helpers.course.grading import grade  # noqa: E402


def submissions(folder: Path, count: int) -> Path:
    """``count`` submissions, half solved, half blank (the two ends of a real class)."""
    handout = folder / "handout"
    make_student_edition(handout)
    subs = folder / "submissions"
    for i in range(count):
        dest = subs / f"student{i:03d}"
        if i % 2 == 0:
            solved_copy(handout, dest, ignore=shutil.ignore_patterns("notebooks"))
        else:
            shutil.copytree(handout, dest, ignore=shutil.ignore_patterns("notebooks"))
    return subs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10, help="submissions (default 10)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs to time")
    args = parser.parse_args(argv)
    print(f"machine: {os.cpu_count()} CPUs; {args.count} submissions, half solved", flush=True)
    with tempfile.TemporaryDirectory(prefix="grading-bench-") as tmp:
        subs = submissions(Path(tmp), args.count)
        base = None
        for jobs in args.jobs:
            started = time.perf_counter()
            doc = grade(subs, seed=0, jobs=jobs)
            seconds = time.perf_counter() - started
            scores = sorted({s["score"] for s in doc["submissions"]})
            if base is None:
                print(f"isolation {doc['grader']['isolation'].split(':')[0]}", flush=True)
            base = base or seconds
            print(
                f"--jobs {jobs}: {seconds:6.1f} s, {seconds / args.count:.2f} s per submission, "
                f"200 submissions in about {200 * seconds / args.count / 60:.1f} min; "
                f"{base / seconds:.2f}x the first; scores {scores}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
