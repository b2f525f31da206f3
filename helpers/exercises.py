"""The assignment's exercises: what a student implements, and the checks that grade it.

Each exercise is a region of ``helpers/`` between ``# BEGIN EXERCISE <key>`` and
``# END EXERCISE`` (see :mod:`helpers.assignment`, which writes the student edition). A check
runs the student's function on small fixed inputs and compares the result with reference
outputs computed from the solution (``python -m helpers references`` writes them to
``helpers/exercise_data/references.pt``; they are loaded with ``weights_only=True``), in the
spirit of CS231n's ``rel_error`` and gradient checks.

Checks are isolated: each calls only its own exercise's functions (the refiner's training step
runs with stand-in networks), so one unsolved exercise does not fail the others' checks; the one
exception is said where it applies (exercise 6 needs the boundary band of exercise 2).

This module imports nothing from the package at import time: the grader loads *its own* copy of
this file in a subprocess and points it at the *student's* package (:func:`run_checks`), so a
submission cannot change how it is graded.
"""
from __future__ import annotations

import importlib
import json
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

REFERENCES = Path(__file__).resolve().with_name("exercise_data") / "references.pt"
TOLERANCE = 1e-5       # relative error accepted in float32 (CS231n asks for about 1e-7 in float64)


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
    Exercise("miou", 1, "mIoU", 10, "01_coarse_unet",
             "helpers/metrics.py, confusion_matrix and iou_per_class",
             "index a bincount with target * C + pred; IoU_c = TP / (TP + FP + FN), nan where the union is 0"),
    Exercise("boundary-band", 2, "Boundary IoU band", 10, "01_coarse_unet",
             "helpers/metrics.py, boundary_band",
             "erode the mask with a max-pool of the complement, padded with 1 (outside the image counts "
             "as contour); the band is the mask minus its erosion"),
    Exercise("unet-up", 3, "U-Net up-sampling block", 15, "01_coarse_unet",
             "helpers/unet.py, Up.forward",
             "up-sample x, pad (or crop, with negative padding) it to the skip's size, concatenate "
             "[skip, x] on the channels and apply self.conv"),
    Exercise("cspn-affinity", 4, "CSPN affinity normalisation", 10, "02_cspn_refinement",
             "helpers/propagation.py, CSPN.normalise",
             "prepare_affinity gives k+ and |k|; divide k+ by max(1, sum_j |k_j|)"),
    Exercise("cspn-step", 5, "CSPN step", 15, "02_cspn_refinement",
             "helpers/propagation.py, CSPN.step",
             "D^{t+1} = base + sum_j kappa_j D^t_j; ring_sums(d, kappa, 3)[:, 0] is the neighbour sum; "
             "d is None at t = 0"),
    Exercise("refiner-loss", 6, "refiner training step", 15, "02_cspn_refinement",
             "helpers/refiner.py, Refiner.train and Refiner.training_loss",
             "train() must keep self.coarse in eval mode; the loss is refinement_loss of the maps H^0..H^T "
             "from self.refine(image) ([coarse, output] for the control)"),
    Exercise("dyspn-step", 7, "DySPN ring attention and step", 25, "03_dyspn_refinement",
             "helpers/propagation.py, DySPN.ring_magnitudes and DySPN.step",
             "A_r sums |w| over ring r (torch.split by self.sizes); G^t = sum_r pi_r A_r + pi_self + EPS; "
             "divide the attention-weighted ring sums plus pi_self D^t by G^t"),
)
BY_KEY = {e.key: e for e in EXERCISES}


class ExerciseFailed(AssertionError):
    """A check failed; the message is one line naming the exercise, what differs, and where to look."""


class _Mismatch(Exception):
    """Raised inside a check: why the student's result is not the reference's."""


def lookup(key: str | int) -> Exercise:
    """An exercise by key (``"cspn-step"``) or number (``5``)."""
    for e in EXERCISES:
        if key in (e.key, e.number, str(e.number)):
            return e
    raise KeyError(f"no exercise {key!r}; the exercises are " + ", ".join(f"{e.number} {e.key}" for e in EXERCISES))


# ------------------------------------------------------------------------------ comparisons
def rel_error(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max(|x| + |y|, 1e-8), as CS231n's ``rel_error``; inf if the shapes differ."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.shape != y.shape:
        return float("inf")
    if x.numel() == 0:
        return 0.0
    both_nan = torch.isnan(x) & torch.isnan(y)
    x, y = torch.where(both_nan, 0.0, x), torch.where(both_nan, 0.0, y)
    err = ((x - y).abs() / (x.abs() + y.abs()).clamp_min(1e-8)).max().item()
    return float("inf") if err != err else err


def _close(name: str, got, want, tol: float = TOLERANCE) -> float:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise _Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = rel_error(got, want)
    if not err <= tol:
        raise _Mismatch(f"{name} differs from the reference (relative error {err:.2g} > {tol:g})")
    return err


def _equal(name: str, got, want) -> None:
    got = torch.as_tensor(got)
    if tuple(got.shape) != tuple(want.shape):
        raise _Mismatch(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    wrong = int((got.to(want.dtype) != want).sum())
    if wrong:
        raise _Mismatch(f"{name} differs from the reference in {wrong} of {want.numel()} entries")


def _gradcheck(name: str, fn, inputs) -> None:
    try:
        ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, raise_exception=False)
    except RuntimeError as exc:  # e.g. an in-place edit of a tensor autograd needs
        raise _Mismatch(f"gradcheck of {name} could not run: {str(exc).splitlines()[0]}") from None
    if not ok:
        raise _Mismatch(f"gradcheck of {name} failed: the backward pass does not match finite differences "
                        "(detach, .data, in-place edits or integer casts break the gradient)")


# ------------------------------------------------------------------------------ fixed inputs
def _rand(gen: torch.Generator, *shape, scale: float = 1.0, dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _blobs(gen: torch.Generator, *shape) -> torch.Tensor:
    """Smooth random masks (B, H, W) bool, some touching the border."""
    noise = torch.rand(shape[0], 1, *shape[1:], generator=gen)
    return nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)[:, 0] > 0.5


class _StandInCoarse(nn.Module):
    """A coarse segmenter with a BatchNorm whose statistics must stay frozen: (B, 3, H, W) -> probabilities."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, classes, 3, padding=1), nn.BatchNorm2d(classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(image)).softmax(1)


class _StandInPropagation(nn.Module):
    """T differentiable steps H^{t+1} = softmax(log H^t + a / 2) on the first C affinity channels, so
    the training step can be checked without the CSPN exercises."""

    def __init__(self, result_type, iterations: int = 2):
        super().__init__()
        self.result_type, self.iterations = result_type, iterations

    def forward(self, h0, raw, iterations=None):
        maps = [h0]
        for _ in range(self.iterations if iterations is None else iterations):
            maps.append((torch.log(maps[-1].clamp_min(1e-6)) + 0.5 * raw[:, :h0.shape[1]]).softmax(1))
        return self.result_type(maps[-1], maps, raw)


def _stand_in_refiner(pkg, method: str, deep: bool, boundary_weight: float, state: dict | None = None):
    """The student's :class:`Refiner` with stand-in networks: only ``train`` and
    ``training_loss`` (and ``refine``, not an exercise) of the student's code run."""
    gen = torch.Generator().manual_seed(7)
    model = pkg.refiner.Refiner(_StandInCoarse(), method, "coarse", 2, width=2, depth=1, iterations=2,
                                perturb=0.0, deep_supervision=deep, boundary_weight=boundary_weight)
    model.guidance = nn.Conv2d(5, model.layout.channels, 3, padding=1)
    if model.propagator is not None:
        model.propagator = _StandInPropagation(pkg.propagation.PropagationResult)
    if state is None:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(_rand(gen, *p.shape, scale=0.5))
            model.coarse.norm.running_mean.copy_(_rand(gen, 2, scale=0.2))
            model.coarse.norm.running_var.copy_(1 + torch.rand(2, generator=gen))
    else:
        model.load_state_dict(state)
    return model


# ------------------------------------------------------------------------------ the checks
# Each exercise has a ``_make_<key>(pkg)`` (inputs and the solution's outputs, run once by
# ``python -m helpers references``) and a ``_check_<key>(pkg, ref)`` that returns what passed.

def _make_miou(pkg) -> dict:
    gen = torch.Generator().manual_seed(1)
    pred2, target2 = torch.randint(0, 2, (2, 5, 7), generator=gen), torch.randint(0, 2, (2, 5, 7), generator=gen)
    pred3, target3 = torch.randint(0, 2, (3, 4, 6), generator=gen), torch.randint(0, 3, (3, 4, 6), generator=gen)
    target3[target3 == 2] = 1   # class 2 absent from both maps: its IoU is nan and leaves the mean
    cm2, cm3 = pkg.metrics.confusion_matrix(pred2, target2, 2), pkg.metrics.confusion_matrix(pred3, target3, 3)
    return {"pred2": pred2, "target2": target2, "pred3": pred3, "target3": target3, "cm2": cm2, "cm3": cm3,
            "iou2": pkg.metrics.iou_per_class(cm2), "iou3": pkg.metrics.iou_per_class(cm3)}


def _check_miou(pkg, ref: dict) -> str:
    m = pkg.metrics
    _equal("confusion_matrix (2 classes)", m.confusion_matrix(ref["pred2"], ref["target2"], 2), ref["cm2"])
    _equal("confusion_matrix (3 classes)", m.confusion_matrix(ref["pred3"], ref["target3"], 3), ref["cm3"])
    iou3 = m.iou_per_class(ref["cm3"])
    if not torch.isnan(torch.as_tensor(iou3)[2]):
        raise _Mismatch("iou_per_class must be nan for a class absent from prediction and ground truth "
                        f"(got {float(torch.as_tensor(iou3)[2]):.3g})")
    err = max(_close("iou_per_class (2 classes)", m.iou_per_class(ref["cm2"]), ref["iou2"]),
              _close("iou_per_class (3 classes)", iou3, ref["iou3"]))
    _close("mean_iou", torch.tensor(m.mean_iou(ref["cm3"])), torch.nanmean(ref["iou3"]))
    return f"confusion matrices exact, IoU relative error {err:.1e}"


def _make_boundary_band(pkg) -> dict:
    gen = torch.Generator().manual_seed(2)
    masks = _blobs(gen, 3, 12, 14)
    masks[2] = False
    masks[2, 3:9, 4:14] = True          # touches the right border: the band runs along it
    return {"masks": masks, "band1": pkg.metrics.boundary_band(masks, 1), "band2": pkg.metrics.boundary_band(masks, 2)}


def _check_boundary_band(pkg, ref: dict) -> str:
    for width in (1, 2):
        _equal(f"boundary_band(mask, width={width})", pkg.metrics.boundary_band(ref["masks"], width), ref[f"band{width}"])
    return "bands exact at widths 1 and 2, border included"


def _make_unet_up(pkg) -> dict:
    gen = torch.Generator().manual_seed(3)
    up = pkg.unet.Up(6, 4, 5)
    with torch.no_grad():
        for name, t in up.state_dict().items():
            if t.is_floating_point():   # variances must be positive; everything else any value
                t.copy_(_rand(gen, *t.shape, scale=0.5).abs() + 0.5 if name.endswith("running_var")
                        else _rand(gen, *t.shape, scale=0.5))
    up.eval()
    x, pad, crop = _rand(gen, 2, 6, 3, 5), _rand(gen, 2, 4, 7, 11), _rand(gen, 2, 4, 5, 9)
    with torch.no_grad():
        return {"state": up.state_dict(), "x": x, "skip_pad": pad, "skip_crop": crop,
                "out_pad": up(x, pad), "out_crop": up(x, crop)}


def _check_unet_up(pkg, ref: dict) -> str:
    up = pkg.unet.Up(6, 4, 5)
    up.load_state_dict(ref["state"])
    up.eval()
    with torch.no_grad():
        err = max(_close("Up(x, skip) with a larger skip (padding)", up(ref["x"], ref["skip_pad"]), ref["out_pad"]),
                  _close("Up(x, skip) with a smaller skip (cropping)", up(ref["x"], ref["skip_crop"]), ref["out_crop"]))
    return f"padded and cropped skips, relative error {err:.1e}"


def _make_cspn_affinity(pkg) -> dict:
    gen = torch.Generator().manual_seed(4)
    raw = _rand(gen, 2, 8, 6, 7, scale=0.5)
    raw[0, :, 2, 3] = 0.0                        # a zero head: kappa = 0, the identity
    raw[1, :, 4, 4] = 1e9                        # clamped, then normalised by the sum
    return {"raw": raw, "kappa": pkg.propagation.CSPN(3).normalise(raw)}


def _check_cspn_affinity(pkg, ref: dict) -> str:
    kappa = pkg.propagation.CSPN(3).normalise(ref["raw"])
    err = _close("kappa", kappa, ref["kappa"])
    return f"kappa relative error {err:.1e} (borders, a zero head and a clamped one included)"


def _dyspn_inputs(pkg, kernel: int, gen: torch.Generator, B=2, C=1, H=6, W=7, dtype=torch.float32) -> dict:
    dyspn = pkg.propagation.DySPN(2, kernel)
    K, R = sum(dyspn.sizes), dyspn.rings
    pos, mag = pkg.propagation.prepare_affinity(_rand(gen, B, K, H, W, scale=0.7, dtype=dtype), kernel)
    return {"base": _rand(gen, B, R, C, H, W, scale=0.1, dtype=dtype), "pos": pos, "mag": mag,
            "p": torch.sigmoid(_rand(gen, 3, B, R + 1, H, W, dtype=dtype))}


def _make_cspn_step(pkg) -> dict:
    gen = torch.Generator().manual_seed(5)
    cspn = pkg.propagation.CSPN(3)
    kappa = cspn.normalise(_rand(gen, 2, 8, 6, 7, scale=0.7))
    base = _rand(gen, 2, 1, 6, 7, scale=0.1)
    ds, d = [], None
    for _ in range(3):
        d = cspn.step(d, base, kappa)
        ds.append(d)
    return {"kappa": kappa, "base": base, "d": torch.stack(ds)}


def _check_cspn_step(pkg, ref: dict) -> str:
    cspn = pkg.propagation.CSPN(3)
    d, ds = None, []
    for _ in range(len(ref["d"])):
        d = cspn.step(d, ref["base"], ref["kappa"])
        ds.append(d)
    err = _close("D^1..D^3 of three steps", torch.stack(ds), ref["d"])
    gen = torch.Generator().manual_seed(50)
    kappa = torch.rand(1, 8, 4, 5, generator=gen, dtype=torch.float64) / 8   # non-negative, sum <= 1
    args = (_rand(gen, 1, 1, 4, 5, dtype=torch.float64), _rand(gen, 1, 1, 4, 5, dtype=torch.float64), kappa)
    _gradcheck("CSPN.step", lambda d, base, k: cspn.step(d, base, k), tuple(a.requires_grad_() for a in args))
    return f"three steps, relative error {err:.1e}; gradcheck passed"


def _make_dyspn_step(pkg) -> dict:
    gen = torch.Generator().manual_seed(6)
    dyspn = pkg.propagation.DySPN(3, 7)
    inp = _dyspn_inputs(pkg, 7, gen)
    A = dyspn.ring_magnitudes(inp["mag"])
    ds, d = [], None
    for t in range(3):
        d = dyspn.step(d, inp["base"], inp["pos"], A, inp["p"][t])
        ds.append(d)
    return {**inp, "A": A, "d": torch.stack(ds)}


def _check_dyspn_step(pkg, ref: dict) -> str:
    dyspn = pkg.propagation.DySPN(3, 7)
    err = _close("ring_magnitudes (A_r)", dyspn.ring_magnitudes(ref["mag"]), ref["A"])
    d, ds = None, []
    for t in range(len(ref["d"])):
        d = dyspn.step(d, ref["base"], ref["pos"], ref["A"], ref["p"][t])
        ds.append(d)
    err = max(err, _close("D^1..D^3 of three steps", torch.stack(ds), ref["d"]))
    small = pkg.propagation.DySPN(2, 5)
    gen = torch.Generator().manual_seed(60)
    inp = _dyspn_inputs(pkg, 5, gen, B=1, H=4, W=5, dtype=torch.float64)
    A = 0.5 + torch.rand(1, small.rings, 4, 5, generator=gen, dtype=torch.float64)
    d0 = _rand(gen, 1, 1, 4, 5, scale=0.1, dtype=torch.float64)
    args = tuple(t.detach().requires_grad_() for t in (d0, inp["base"], inp["pos"], A, inp["p"][0]))
    _gradcheck("DySPN.step", lambda d, base, pos, A, p: small.step(d, base, pos, A, p), args)
    return f"A_r and three steps, relative error {err:.1e}; gradcheck passed"


_REFINER_CASES = {"cspn-deep": ("cspn", True, 4.0), "cspn-last": ("cspn", False, 1.0), "control": ("control", True, 4.0)}


def _refiner_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(8)
    return torch.rand(2, 3, 12, 12, generator=gen), _blobs(gen, 2, 12, 12).long()


def _make_refiner_loss(pkg) -> dict:
    image, target = _refiner_batch()
    out = {}
    for name, (method, deep, bw) in _REFINER_CASES.items():
        model = _stand_in_refiner(pkg, method, deep, bw).train()
        loss = model.training_loss(image, target)
        loss.backward()
        out[name] = {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "loss": loss.detach(),
                     "grad": model.guidance.weight.grad.clone()}
    return out


def _check_refiner_loss(pkg, ref: dict) -> str:
    image, target = _refiner_batch()
    err = 0.0
    for name, (method, deep, bw) in _REFINER_CASES.items():
        model = _stand_in_refiner(pkg, method, deep, bw, ref[name]["state"])
        frozen = {k: v.clone() for k, v in model.coarse.state_dict().items()}
        result = model.train()
        if result is not model:
            raise _Mismatch("Refiner.train must return self (as nn.Module.train does)")
        if model.coarse.training or not model.guidance.training:
            raise _Mismatch("after model.train() the coarse net must be in eval mode (frozen BatchNorm) and the "
                            f"guidance net in train mode; got coarse.training={model.coarse.training}, "
                            f"guidance.training={model.guidance.training}")
        what = f"training_loss ({method}, deep_supervision={deep}, boundary_weight={bw:g})"
        loss = model.training_loss(image, target)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise _Mismatch(f"{what} must return a scalar tensor, got {type(loss).__name__} "
                            f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        err = max(err, _close(what, loss.detach(), ref[name]["loss"]))
        loss.backward()
        if model.guidance.weight.grad is None:
            raise _Mismatch(f"{what}: no gradient reaches the guidance net (is the loss detached?)")
        err = max(err, _close(f"the guidance gradient of {what}", model.guidance.weight.grad, ref[name]["grad"]))
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.coarse.parameters()):
            raise _Mismatch("the coarse net received a gradient: it must stay frozen")
        for k, v in model.coarse.state_dict().items():
            if not torch.equal(v, frozen[k]):
                raise _Mismatch(f"the coarse net's {k} changed during the training step: it must stay frozen "
                                "(eval mode keeps BatchNorm's running statistics)")
    return f"losses and gradients of 3 settings, relative error {err:.1e}; coarse net frozen"


_CHECKS = {e.key: (globals()[f"_make_{e.key.replace('-', '_')}"], globals()[f"_check_{e.key.replace('-', '_')}"])
           for e in EXERCISES}
_NEEDS = {"refiner-loss": ("boundary-band",)}   # the boundary-weighted loss uses the band


# ------------------------------------------------------------------------------ running checks
@dataclass
class Result:
    key: str
    number: int
    title: str
    points: int
    max_points: int
    passed: bool
    message: str


def _package(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{m: importlib.import_module(f"{name}.{m}")
                                    for m in ("metrics", "unet", "propagation", "refiner", "losses")})


def _own_package() -> str:
    return __package__ or "helpers"


def load_references(path: str | Path = REFERENCES) -> dict:
    """The reference inputs and outputs (plain tensors, loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the instructor regenerates it with `python -m helpers references`")
    return torch.load(path, map_location="cpu", weights_only=True)


def make_references(package: str | None = None, path: str | Path = REFERENCES) -> Path:
    """Run the solution on the fixed inputs and save inputs and outputs (``python -m helpers references``)."""
    pkg = _package(package or _own_package())
    refs = {}
    for key, (make, _) in _CHECKS.items():
        with torch.no_grad() if key != "refiner-loss" else torch.enable_grad():
            refs[key] = make(pkg)
    refs = _detached(refs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(refs, path)
    return path


def _detached(tree):
    if isinstance(tree, dict):
        return {k: _detached(v) for k, v in tree.items()}
    return tree.detach().clone().contiguous() if isinstance(tree, torch.Tensor) else tree


def check_one(key: str, pkg=None, refs: dict | None = None) -> Result:
    """Run one exercise's check; never raises for the student's errors (they become the message)."""
    ex = lookup(key)
    pkg = pkg or _package(_own_package())
    refs = refs if refs is not None else load_references()
    try:
        with torch.random.fork_rng():   # a check never moves the notebook's random state
            torch.manual_seed(0)
            detail = _CHECKS[ex.key][1](pkg, refs[ex.key])
        return Result(ex.key, ex.number, ex.title, ex.points, ex.points, True, f"{ex.label}: passed: {detail}")
    except NotImplementedError as exc:
        text = str(exc)
        if text.startswith("Exercise ") and not text.startswith(ex.label):
            blocker = text.split(":")[0]
            msg = f"{ex.label} cannot be checked yet: it needs {blocker} first"
        else:
            msg = f"{ex.label} is not done yet: write it in {ex.where}"
    except _Mismatch as exc:
        msg = f"{ex.label} failed: {exc}; edit {ex.where}"
    except Exception as exc:  # the student's code raised: name the error and where it came from
        frame = _student_frame(exc)
        msg = f"{ex.label} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{frame}"
    needs = [lookup(n).label for n in _NEEDS.get(ex.key, ())]
    if needs and "cannot be checked" not in msg:
        msg += f" (this check also uses {', '.join(needs)})"
    return Result(ex.key, ex.number, ex.title, 0, ex.points, False, msg)


def _student_frame(exc: BaseException) -> str:
    tb, where = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if "helpers" in Path(name).parts and not name.endswith("exercises.py"):
            where = f" (at {Path(name).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where


def run_checks(package: str | None = None, references: str | Path = REFERENCES) -> list[Result]:
    """Every exercise's check against the package named ``package`` (the student's, when grading)."""
    pkg = _package(package or _own_package())
    refs = load_references(references)
    return [check_one(e.key, pkg, refs) for e in EXERCISES]


# ------------------------------------------------------------------------------ in a notebook
def _is_exercise_error(value: BaseException) -> bool:
    return isinstance(value, ExerciseFailed) or (isinstance(value, NotImplementedError)
                                                 and str(value).startswith("Exercise "))


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def install_one_line_errors() -> None:
    """In IPython (idempotent; nothing elsewhere): show :class:`ExerciseFailed` and the exercises'
    ``NotImplementedError`` as one line instead of a traceback into ``helpers/``, and a later
    cell's ``NameError`` (a variable the stopped cell never made) as that same line. The cells
    still fail (an error output), so ``pytest --nbval`` counts them."""
    shell = _shell()
    if shell is None or getattr(shell, "_workbook_exercise_handler", False):
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        # IPython leaves the display to the handler
        if _is_exercise_error(value):
            shell._workbook_exercise_error = str(value)   # on the kernel's shell, not in this module
            stb = [f"{etype.__name__}: {value}"]
        elif isinstance(value, NameError) and getattr(shell, "_workbook_exercise_error", None):
            stb = [f"{etype.__name__}: {value}, because an earlier cell stopped: {shell._workbook_exercise_error}"]
        else:  # anything else keeps its usual traceback
            shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
            return None
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((ExerciseFailed, NotImplementedError, NameError), handler)
    shell._workbook_exercise_handler = True


def _passed() -> None:
    shell = _shell()
    if shell is not None:
        shell._workbook_exercise_error = None


def check(key: str | int) -> Result:
    """The check cell: run one exercise's check, print one line; raise :class:`ExerciseFailed` if it fails."""
    install_one_line_errors()
    result = check_one(key)
    if not result.passed:
        raise ExerciseFailed(result.message)
    _passed()
    print(result.message)
    return result


def require(*keys: str | int) -> None:
    """First line of a cell that uses these exercises (keys or numbers; none: all of them): stops
    it with the failing check's one-line message instead of a long traceback from deep inside
    training."""
    install_one_line_errors()
    refs = load_references()
    for key in keys or [e.key for e in EXERCISES]:
        result = check_one(key, refs=refs)
        if not result.passed:
            raise ExerciseFailed(result.message)
    _passed()


def _worker(submission: str, references: str, out: str) -> None:
    """Entry point of the grading subprocess: the submission's package comes first on the path."""
    sys.path.insert(0, submission)
    results = run_checks("helpers", references)
    Path(out).write_text(json.dumps([asdict(r) for r in results]))
