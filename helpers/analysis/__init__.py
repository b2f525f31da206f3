"""Looking at results: metrics (``metrics``), paired bootstrap (``statistics``), where the errors
lie (``error_bands``), the notebooks' self-checks (``selfcheck``), figures (``viz``) and the
iteration slider (``scrubber``). Works on tensors; imports no model code."""
