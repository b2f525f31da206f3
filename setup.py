"""The wheel also carries the non-package files of the student edition (notebooks, project files),
listed once in ``helpers/course/handout.txt``, under ``helpers/course/workbook/``: an installed
workbook can then write the hand-out without a checkout (``python -m helpers assignment OUT``).
Everything else is declared in ``pyproject.toml``."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "helpers" / "course" / "handout.txt"


class BuildWithWorkbook(build_py):
    """``build_py``, then the manifest's files copied into the built package."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "helpers" / "course" / "workbook"
        for line in MANIFEST.read_text(encoding="utf-8").splitlines():
            pattern = line.strip()
            if not pattern or pattern.startswith(("#", "!")):
                continue
            for src in sorted(ROOT.glob(pattern)):
                if src.is_file():
                    dst = target / src.relative_to(ROOT)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithWorkbook})
