"""Progress of long work, wherever it runs.

* In a live notebook: tqdm bars (widgets) for epochs and batches.
* In a headless run (``python -m helpers run`` sets ``WORKBOOK_HEADLESS=1``): no bars, because
  a saved notebook keeps a widget bar only as its first frame (``epoch 1: 0%| | 0/24``), which
  reads as if training never ran. Instead each finished epoch is appended as one JSON line to
  the file named by ``WORKBOOK_PROGRESS_FILE``, which the runner follows and prints in the
  terminal (stage, epoch of epochs, loss, validation mIoU, time left).
* Everywhere: one summary line per trained stage, printed when its training ends, which is
  what a saved notebook shows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

HEADLESS_ENV = "WORKBOOK_HEADLESS"
PROGRESS_ENV = "WORKBOOK_PROGRESS_FILE"


def headless() -> bool:
    """True inside a notebook executed by ``python -m helpers run`` (or with
    ``WORKBOOK_HEADLESS=1``)."""
    return os.environ.get(HEADLESS_ENV) == "1"


def bar(iterable=None, show: bool = True, **kwargs):
    """A tqdm bar (a widget in notebooks), off when ``show`` is False or the run is headless."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not show or headless(), **kwargs)


def report_epoch(
    stage: str,
    epoch: int,
    epochs: int,
    loss: float,
    val_miou: float,
    seconds: float,
    seconds_left: float,
    capped: bool = False,
) -> None:
    """Append one finished epoch to the progress file, if a runner asked for one."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    event = {
        "stage": stage,
        "epoch": epoch,
        "epochs": epochs,
        "loss": round(loss, 4),
        "val_miou": round(val_miou, 4),
        "seconds": round(seconds, 1),
        "left": round(seconds_left, 1),
        "capped": capped,
    }
    with open(path, "ab") as handle:  # bytes, "\n" on every platform: the reader counts bytes
        handle.write((json.dumps(event) + "\n").encode())


def follow(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events appended to ``path`` since byte ``offset``, and the new offset (complete lines
    only)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
    events = []
    for line in chunk[:end].decode(errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        # progress is for display only: a bad line is skipped, never fatal
        except json.JSONDecodeError:
            continue
    return events, offset + end


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def describe(event: dict) -> str:
    """``cspn refiner: epoch 5/32, loss 0.452, val mIoU 0.661, 1 min 10 s, about 6 min 20 s
    left``."""
    left = (
        f"at most {_duration(event['left'])} left"
        if event.get("capped")
        else f"about {_duration(event['left'])} left"
    )
    return (
        f"{event['stage']}: epoch {event['epoch']}/{event['epochs']}, loss {event['loss']:.3f}, "
        f"val mIoU {event['val_miou']:.3f}, {_duration(event['seconds'])}, {left}"
    )
