"""Training and evaluation: ``fit`` and one ``train_step`` (``loop``); predictions, metrics of a
split and the iteration sweep (``evaluation``)."""
