"""``python -m helpers ...`` (``main``): running the notebooks (``run``, ``execute``), the course's
commands (``course``), and the notebooks' first cell (``colab``)."""
