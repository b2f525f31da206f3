"""The assignment's seven exercises: what a student implements, where, and for how many points.

Each exercise is a region of ``helpers/`` between ``# BEGIN EXERCISE <key>`` and
``# END EXERCISE`` (:mod:`helpers.course.edition` writes the student edition from them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``key`` names its regions in the code; ``where`` is what the student edits."""

    key: str
    number: int
    title: str
    points: int
    notebook: str
    where: str
    hint: str

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"

    def stub_message(self) -> str:
        """The message of the ``NotImplementedError`` that replaces the solution."""
        return f"{self.label}: not done yet: write it in {self.where}. Hint: {self.hint}"


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "miou",
        1,
        "mIoU",
        10,
        "01_coarse_unet",
        "helpers/analysis/metrics.py, confusion_matrix and iou_per_class",
        "index a bincount with target * C + pred; IoU_c = TP / (TP + FP + FN), nan where the "
        "union is 0",
    ),
    Exercise(
        "boundary-band",
        2,
        "Boundary IoU band",
        10,
        "01_coarse_unet",
        "helpers/analysis/metrics.py, boundary_band",
        "erode the mask with a max-pool of the complement, padded with 1 (outside the image counts "
        "as contour); the band is the mask minus its erosion",
    ),
    Exercise(
        "unet-up",
        3,
        "U-Net up-sampling block",
        15,
        "01_coarse_unet",
        "helpers/models/unet.py, Up.forward",
        "up-sample x, pad (or crop, with negative padding) it to the skip's size, concatenate "
        "[skip, x] on the channels and apply self.conv",
    ),
    Exercise(
        "cspn-affinity",
        4,
        "CSPN affinity normalisation",
        10,
        "02_cspn_refinement",
        "helpers/models/propagation/propagators.py, CSPN.normalise",
        "prepare_affinity gives k+ and |k|; divide k+ by max(1, sum_j |k_j|)",
    ),
    Exercise(
        "cspn-step",
        5,
        "CSPN step",
        15,
        "02_cspn_refinement",
        "helpers/models/propagation/propagators.py, CSPN.step",
        "D^{t+1} = base + sum_j kappa_j D^t_j; ring_sums(d, kappa, 3)[:, 0] is the neighbour sum; "
        "d is None at t = 0",
    ),
    Exercise(
        "refiner-loss",
        6,
        "refiner training step",
        15,
        "02_cspn_refinement",
        "helpers/models/refiner.py, Refiner.train and Refiner.training_loss",
        "train() must keep self.coarse in eval mode; the loss is refinement_loss of the maps "
        "H^0..H^T "
        "from self.refine(image, truth=target) ([coarse, output] for the control)",
    ),
    Exercise(
        "dyspn-step",
        7,
        "DySPN ring attention and step",
        25,
        "03_dyspn_refinement",
        "helpers/models/propagation/propagators.py, DySPN.ring_magnitudes and DySPN.step",
        "A_r sums |w| over ring r (torch.split by self.sizes); G^t = sum_r pi_r A_r + pi_self + "
        "EPS; "
        "divide the attention-weighted ring sums plus pi_self D^t by G^t",
    ),
)

BY_KEY = {e.key: e for e in EXERCISES}


class AssignmentError(ValueError):
    """What an instructor handed the course's commands is wrong: a malformed exercise marker, an
    output folder that is not empty, nothing to grade (the message says what and where)."""


class ExerciseFailed(AssertionError):
    """A check failed; the message is one line naming the exercise, what differs, and where to
    look."""


def lookup(key: str | int) -> Exercise:
    """An exercise by key (``"cspn-step"``) or number (``5``)."""
    for e in EXERCISES:
        if key in (e.key, e.number, str(e.number)):
            return e
    raise KeyError(
        f"no exercise {key!r}; the exercises are "
        + ", ".join(f"{e.number} {e.key}" for e in EXERCISES)
    )
