"""What the notebooks call: a run (``session``), the stage registry (``stages``), training or
loading any stage (``workflow``), the comparison table and ``results.json`` (``results``),
timings (``timing``) and the docs' figures (``figures``)."""
