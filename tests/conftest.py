"""Under pytest the smoke profile is the default (the user's WORKBOOK_PROFILE wins if set).

Set here, at import, so the notebook kernels that nbval starts inherit it too.
"""
import os

os.environ.setdefault("WORKBOOK_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
