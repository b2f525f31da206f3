"""The work around the training steps, the DataLoader path and the lean device path side by side.

For the chosen profile's data (``--data-root`` or the default source) on ``--device`` (CUDA where
there is one), best of ``--repeats``:

* **loading**, one epoch of training batches, as :func:`helpers.training.loop.fit` would get them:
  the DataLoader (a torchvision flip and crop per image on the CPU, collated, copied to the
  device) against :class:`helpers.data.batches.DeviceBatches` (the split copied to the device once,
  the batch indexed there and augmented by one ``grid_sample``);
* **evaluation** of the validation split by a fresh coarse U-Net of the profile: the maps copied
  to the CPU and counted there (``evaluate_probs(predict(...))``, the path before the lean loop)
  against :func:`helpers.training.evaluation.evaluate` (the maps stay where they were computed).

Nothing is trained. On the CPU the lean loading path is not what training uses (it is used on
CUDA only), but it is timed all the same.

    python benchmarks/loading.py                        # cpu profile, synthetic data
    python benchmarks/loading.py --profile full --data-root $PETS_ROOT
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_seconds(run, repeats: int, device) -> float:
    """The fastest of ``repeats`` timed calls of ``run()`` after one warm-up call."""
    from helpers.workbook.timing import synchronise

    run()
    times = []
    for _ in range(repeats):
        synchronise(device)
        t0 = time.perf_counter()
        run()
        synchronise(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    import torch

    from helpers.data.batches import DeviceBatches, make_loader
    from helpers.models.coarse import CoarseSegmenter
    from helpers.training.evaluation import evaluate, evaluate_probs, predict
    from helpers.workbook.session import open_workbook

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=None, help="default: WORKBOOK_PROFILE, else cpu / full")
    p.add_argument(
        "--data-root",
        default=None,
        help="a folder holding oxford-iiit-pet/ (default: PETS_ROOT, data/, or synthetic)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    wb = open_workbook(a.profile, a.data_root, verbose=False, device=a.device)
    cfg, device, train, val = wb.cfg, torch.device(a.device), wb.data["train"], wb.data["val"]
    bs = cfg.batch_size

    def through_dataloader():
        for images, targets in make_loader(train, bs, shuffle=True, seed=0):
            images.to(device), targets.to(device)

    lean = DeviceBatches(train, bs, shuffle=True, seed=0, device=device)

    def through_device():
        for images, targets in lean:
            pass

    torch.manual_seed(0)
    model = CoarseSegmenter.from_config(cfg).to(device)
    amp = cfg.amp and device.type == "cuda"
    rows = [
        (
            "loading, one epoch",
            best_seconds(through_dataloader, a.repeats, device),
            best_seconds(through_device, a.repeats, device),
        ),
        (
            "evaluation of validation",
            best_seconds(
                lambda: evaluate_probs(predict(model, val, bs, device, amp), val), a.repeats, device
            ),
            best_seconds(lambda: evaluate(model, val, bs, device, amp), a.repeats, device),
        ),
    ]
    print(
        f"data {wb.source.name}; profile {cfg.profile}, {cfg.image_size} px, batch {bs}; train "
        f"{len(train)}, "
        f"val {len(val)} images; {device} ({platform.machine()}, {torch.get_num_threads()} torch "
        "threads, "
        f"torch {torch.__version__}); best of {a.repeats}"
    )
    print(f"{'what':28s} {'DataLoader / CPU s':>19s} {'device s':>9s} {'speed-up':>9s}")
    for what, before, after in rows:
        print(f"{what:28s} {before:19.4f} {after:9.4f} {before / after:8.1f}x")


if __name__ == "__main__":
    main()
