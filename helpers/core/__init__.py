"""Foundations: the run's settings (``config``), files and checkpoints (``checkpoint``), process
settings (``runtime``) and progress reporting (``progress``). Imports nothing else of the
package."""
