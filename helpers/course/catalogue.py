"""The assignment's nine exercises: what a student implements, where, and for how many points.

Each exercise is a region of ``helpers/`` between ``# BEGIN EXERCISE <key>`` and
``# END EXERCISE`` (:mod:`helpers.course.edition` writes the student edition from them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``key`` names its regions in the code; ``where`` is what the student edits.
    Its hints come in tiers, none of them code: ``concept`` (in the stub's message) names the
    idea; ``steps`` (``exercises.hint(key, 2)``) gives the shapes and the steps."""

    key: str
    number: int
    title: str
    points: int
    notebook: str
    where: str
    concept: str
    steps: str

    @property
    def label(self) -> str:
        return f"Exercise {self.number} ({self.title})"

    def hint(self, tier: int = 1) -> str:
        """Hint ``tier`` 1 (the concept) or 2 (the shapes and steps)."""
        if tier not in (1, 2):
            raise ValueError(f"hints come in tiers 1 and 2, not {tier!r}")
        return self.concept if tier == 1 else self.steps

    def stub_message(self) -> str:
        """The message of the ``NotImplementedError`` that replaces the solution."""
        return (
            f"{self.label}: not done yet: write it in {self.where}. Hint: {self.concept} "
            f"(exercises.hint({self.key!r}, 2) gives the steps)"
        )


EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        key="miou",
        number=1,
        title="mIoU",
        points=10,
        notebook="01_coarse_unet",
        where="helpers/analysis/metrics.py, confusion_matrix and iou_per_class",
        concept="count every (true class, predicted class) pair of pixels into a C x C matrix; "
        "IoU_c = TP / (TP + FP + FN)",
        steps="confusion_matrix: give each pixel one number that encodes its pair, true class "
        "times C plus predicted class, count how often each of the C * C numbers occurs and lay "
        "the counts out as C x C (rows: true class, columns: prediction), whatever the batch "
        "shape. iou_per_class: TP is the diagonal, FP the column sums minus TP, FN the row sums "
        "minus TP; a class with TP + FP + FN = 0 is absent from both maps: its IoU is nan.",
    ),
    Exercise(
        key="boundary-band",
        number=2,
        title="Boundary IoU band",
        points=10,
        notebook="01_coarse_unet",
        where="helpers/analysis/metrics.py, boundary_band",
        concept="the band is the mask minus its erosion by `width` pixels; outside the image "
        "counts as contour",
        steps="a pixel survives the erosion when every pixel within `width` of it (a square of "
        "side 2 width + 1) is in the mask, the outside of the image counting as not in the mask. "
        "The minimum of the mask over that square is the erosion; the maximum of its complement "
        "is one minus it (max-pooling computes maxima). The band: in the mask, not in the "
        "erosion. Masks are (B, H, W) booleans; so is the band.",
    ),
    Exercise(
        key="unet-up",
        number=3,
        title="U-Net up-sampling block",
        points=15,
        notebook="01_coarse_unet",
        where="helpers/models/unet.py, Up.forward",
        concept="up-sample the deeper features, bring them to the skip's size, concatenate, "
        "convolve",
        steps="x (B, C_in, h, w) is up-sampled by the block's up-sampling layer to about twice "
        "its size; the skip (B, C_skip, H, W) may be a pixel or two larger or smaller: pad x (a "
        "negative padding crops), split evenly between the two sides, to H x W; concatenate the "
        "skip first, then x, along the channels; the block's double convolution gives "
        "(B, C_out, H, W).",
    ),
    Exercise(
        key="cspn-affinity",
        number=4,
        title="CSPN affinity normalisation",
        points=10,
        notebook="02_cspn_refinement",
        where="helpers/models/propagation/propagators.py, CSPN.normalise",
        concept="kappa_j = k_j^+ / max(1, sum_j |k_j|); out-of-image neighbours weigh nothing",
        steps="the affinity preparation of the propagation package returns the positive parts "
        "k^+ and the magnitudes |k| of the clamped affinities, out-of-image neighbours already "
        "zero, both (B, 8, H, W). Sum the magnitudes over the 8 neighbours for each pixel, keep "
        "that dimension so it broadcasts, and never divide by less than 1 (a head near zero then "
        "leaves the map as it is).",
    ),
    Exercise(
        key="neighbours",
        number=5,
        title="neighbour gather",
        points=15,
        notebook="02_cspn_refinement",
        where="helpers/models/propagation/neighbours.py, gather",
        concept="every pixel reads the map at each of the window's neighbour offsets; a neighbour "
        "outside the image reads 0, never the value at the opposite border",
        steps="x is (B, C, H, W). Surround the map with zeros as wide as the window's reach "
        "(window_reach: 1 for 3x3, 3 for 7x7, 6 for a 7x7 window at dilation 2). For each "
        "offset (dy, dx), in the order window_offsets lists them, the values at that neighbour "
        "of all pixels form one H x W map: the part of the zero-surrounded map moved by dy rows "
        "and dx columns from the middle. Stack the K maps along a new third dimension: "
        "(B, C, K, H, W). Rolling the map instead wraps around the border: the check looks "
        "there. Autograd must reach x (no detaching).",
    ),
    Exercise(
        key="cspn-step",
        number=6,
        title="CSPN step",
        points=15,
        notebook="02_cspn_refinement",
        where="helpers/models/propagation/propagators.py, CSPN.base and CSPN.step",
        concept="base = sum_j kappa_j (H^0_j - H^0) once; then D^{t+1} = base + sum_j kappa_j "
        "D^t_j, with D^0 = 0",
        steps="base(h0, kappa): h0 (B, C', H, W); gather its 8 neighbours with your gather of "
        "exercise 5, (B, C', 8, H, W), and subtract each pixel's own value from its neighbours' "
        "before weighting (a constant map then gives exactly 0); weigh by kappa (B, 8, H, W), "
        "the same for every class, and sum over the neighbours: (B, C', H, W). step(d, base, "
        "kappa): d is D^t (B, C', H, W), or None at t = 0, where the neighbour sum vanishes and "
        "the step is base; otherwise base plus the kappa-weighted sum of d's 8 neighbours.",
    ),
    Exercise(
        key="refiner-loss",
        number=7,
        title="refiner training step",
        points=15,
        notebook="02_cspn_refinement",
        where="helpers/models/refiner.py, Refiner.train and Refiner.training_loss",
        concept="training mode must leave the frozen coarse net in eval mode; the loss is the "
        "refinement loss of the maps H^0 .. H^T",
        steps="train(mode): switch the module as nn.Module does, put the coarse net back in "
        "eval mode (its BatchNorm statistics must not move), return the module. "
        "training_loss(image, target): refine the image with the ground truth given (it "
        "degrades the starts in train mode), take the propagation's maps H^0 .. H^T (the "
        "control propagates nothing: its maps are the coarse map and its output), and give them, "
        "the target and the refiner's loss settings (deep supervision, boundary weight, start "
        "weight) to the refinement loss.",
    ),
    Exercise(
        key="ring-sums",
        number=8,
        title="DySPN ring sums",
        points=15,
        notebook="03_dyspn_refinement",
        where="helpers/models/propagation/neighbours.py, ring_sums",
        concept="per ring r of the window, S_r = sum over the ring's neighbours j of w_j X_j "
        "(centred: w_j (X_j - X))",
        steps="gather X's K neighbours, (B, C, K, H, W), with your gather of exercise 5; when "
        "centred, subtract each pixel's own value from its neighbours' first; weigh them by w "
        "(B, K, H, W), the same for every class. The neighbours come ring by ring, as many per "
        "ring as ring_sizes says (8, 16, 24 for 7x7): sum each ring's group over its neighbours "
        "and stack the R sums along a new second dimension: (B, R, C, H, W).",
    ),
    Exercise(
        key="dyspn-step",
        number=9,
        title="DySPN ring attention and step",
        points=25,
        notebook="03_dyspn_refinement",
        where="helpers/models/propagation/propagators.py, DySPN.ring_magnitudes and DySPN.step",
        concept="A_r sums |w| over ring r; G^t = sum_r pi_r A_r + pi_self + EPS normalises the "
        "attention-weighted ring sums plus the pixel's own term",
        steps="ring_magnitudes: the 48 magnitudes come ring by ring (8, 16, 24 channels, "
        "self.sizes); sum each ring's channels: (B, R, H, W). step: G (B, 1, H, W) is the first R "
        "attention channels times A, summed over rings, plus the last channel (the pixel's own "
        "attention) plus EPS. Per ring: base_r plus the ring's weighted neighbour sum of d (none "
        "at t = 0: the ring sums of exercise 8, through the propagator's own ring sums method), "
        "(B, R, C', H, W); weigh the rings by their attention and sum them, add the "
        "pixel's own attention times d (not at t = 0), divide by G.",
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
