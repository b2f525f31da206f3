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
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

REFERENCES = Path(__file__).resolve().with_name("exercise_data") / "references.pt"
TOLERANCE = 1e-5       # accepted relative error (normwise, see rel_error): float32 rounding, another thread count


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
             "from self.refine(image, truth=target) ([coarse, output] for the control)"),
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
    """max |x - y| / max |y|: the largest difference relative to the reference's scale (``inf`` if
    the shapes differ; entries that are nan in both agree). Normwise rather than per element, so
    that float32 rounding in entries near zero does not read as an error."""
    x, y = torch.as_tensor(x).double(), torch.as_tensor(y).double()
    if x.shape != y.shape:
        return float("inf")
    if x.numel() == 0:
        return 0.0
    both_nan = torch.isnan(x) & torch.isnan(y)
    x, y = torch.where(both_nan, 0.0, x), torch.where(both_nan, 0.0, y)
    err = ((x - y).abs().max() / y.abs().max().clamp_min(1e-12)).item()
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
    wrong = int((got.double() != want.double()).sum())   # no cast to the reference's dtype: 0.3 is not True
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


def _stand_in_refiner(pkg, method: str, deep: bool, boundary_weight: float, state: dict):
    """The student's :class:`Refiner` with stand-in networks whose weights are ``state``: only
    ``train`` and ``training_loss`` (and ``refine``, not an exercise) of the student's code run."""
    model = pkg.refiner.Refiner(_StandInCoarse(), method, "coarse", 2, width=2, depth=1, iterations=2,
                                perturb=0.0, deep_supervision=deep, boundary_weight=boundary_weight)
    model.guidance = nn.Conv2d(5, model.layout.channels, 3, padding=1)
    if model.propagator is not None:
        model.propagator = _StandInPropagation(pkg.propagation.PropagationResult)
    model.load_state_dict(state)
    return model


def _stand_in_state(method: str, gen: torch.Generator) -> dict:
    """Random weights for :func:`_stand_in_refiner` (BatchNorm statistics included)."""
    channels = {"cspn": 8, "control": 2}[method]
    state = {"coarse.conv.weight": _rand(gen, 2, 3, 3, 3, scale=0.5), "coarse.conv.bias": _rand(gen, 2, scale=0.5),
             "coarse.norm.weight": 1 + _rand(gen, 2, scale=0.2), "coarse.norm.bias": _rand(gen, 2, scale=0.2),
             "coarse.norm.running_mean": _rand(gen, 2, scale=0.2), "coarse.norm.running_var": 1 + torch.rand(2, generator=gen),
             "coarse.norm.num_batches_tracked": torch.tensor(0),
             "guidance.weight": _rand(gen, channels, 5, 3, 3, scale=0.5), "guidance.bias": _rand(gen, channels, scale=0.5)}
    return state


# ------------------------------------------------------------------------------ the checks
# Each exercise has three parts, so that grading never trusts a submission's process:
# ``_inputs_<key>(gen)`` draws small inputs (fixed ones for the shipped references, fresh ones
# for every grading run); ``_run_<key>(pkg, inputs)`` runs a package's code on them and returns
# tensors only (the student's package in a subprocess when grading, the solution's for the
# reference); ``_compare_<key>(got, want)`` compares the two in the grader's own process and
# says what differs. Gradients are compared with the solution's, in float64 for the
# propagation, so a ``.detach()`` or an in-place edit fails.

def _inputs_miou(gen) -> dict:
    pred2, target2 = torch.randint(0, 2, (2, 5, 7), generator=gen), torch.randint(0, 2, (2, 5, 7), generator=gen)
    pred3, target3 = torch.randint(0, 2, (3, 4, 6), generator=gen), torch.randint(0, 3, (3, 4, 6), generator=gen)
    target3[target3 == 2] = 1   # class 2 absent from both maps: its IoU is nan and leaves the mean
    return {"pred2": pred2, "target2": target2, "pred3": pred3, "target3": target3}


def _run_miou(pkg, x: dict) -> dict:
    m = pkg.metrics
    cm2, cm3 = m.confusion_matrix(x["pred2"], x["target2"], 2), m.confusion_matrix(x["pred3"], x["target3"], 3)
    # IoU of the student's own matrices: both functions are this one exercise, and a wrong
    # matrix is reported first (by the comparison of the matrices)
    return {"cm2": cm2, "cm3": cm3, "iou2": m.iou_per_class(cm2), "iou3": m.iou_per_class(cm3),
            "miou3": torch.tensor(m.mean_iou(cm3))}


def _compare_miou(got: dict, want: dict) -> str:
    _equal("confusion_matrix (2 classes)", got["cm2"], want["cm2"])
    _equal("confusion_matrix (3 classes)", got["cm3"], want["cm3"])
    if not torch.isnan(torch.as_tensor(got["iou3"])[2]):
        raise _Mismatch("iou_per_class must be nan for a class absent from prediction and ground truth "
                        f"(got {float(torch.as_tensor(got['iou3'])[2]):.3g})")
    err = max(_close("iou_per_class (2 classes)", got["iou2"], want["iou2"]),
              _close("iou_per_class (3 classes)", got["iou3"], want["iou3"]))
    _close("mean_iou", got["miou3"], want["miou3"])
    return f"confusion matrices exact, IoU relative error {err:.1e}"


def _inputs_boundary_band(gen) -> dict:
    masks = _blobs(gen, 3, 12, 14)
    masks[2] = False
    masks[2, 3:9, 4:14] = True          # touches the right border: the band runs along it
    return {"masks": masks}


def _run_boundary_band(pkg, x: dict) -> dict:
    return {f"band{w}": pkg.metrics.boundary_band(x["masks"], w) for w in (1, 2)}


def _compare_boundary_band(got: dict, want: dict) -> str:
    for width in (1, 2):
        _equal(f"boundary_band(mask, width={width})", got[f"band{width}"], want[f"band{width}"])
    return "bands exact at widths 1 and 2, border included"


def _inputs_unet_up(gen) -> dict:
    shapes = {"conv.block.0.weight": (5, 10, 3, 3), "conv.block.1.weight": (5,), "conv.block.1.bias": (5,),
              "conv.block.1.running_mean": (5,), "conv.block.3.weight": (5, 5, 3, 3), "conv.block.4.weight": (5,),
              "conv.block.4.bias": (5,), "conv.block.4.running_mean": (5,)}
    state = {k: _rand(gen, *shape, scale=0.5) for k, shape in shapes.items()}
    for k in ("conv.block.1.running_var", "conv.block.4.running_var"):   # variances must be positive
        state[k] = 0.5 + _rand(gen, 5, scale=0.5).abs()
    state["conv.block.1.num_batches_tracked"] = state["conv.block.4.num_batches_tracked"] = torch.tensor(0)
    return {"state": state, "x": _rand(gen, 2, 6, 3, 5), "skip_pad": _rand(gen, 2, 4, 7, 11),
            "skip_crop": _rand(gen, 2, 4, 5, 9)}


def _run_unet_up(pkg, x: dict) -> dict:
    up = pkg.unet.Up(6, 4, 5)
    up.load_state_dict(x["state"])
    up.eval()
    with torch.no_grad():
        return {"pad": up(x["x"], x["skip_pad"]), "crop": up(x["x"], x["skip_crop"])}


def _compare_unet_up(got: dict, want: dict) -> str:
    err = max(_close("Up(x, skip) with a larger skip (padding)", got["pad"], want["pad"]),
              _close("Up(x, skip) with a smaller skip (cropping)", got["crop"], want["crop"]))
    return f"padded and cropped skips, relative error {err:.1e}"


def _inputs_cspn_affinity(gen) -> dict:
    raw = _rand(gen, 2, 8, 6, 7, scale=0.5)
    raw[0, :, 2, 3] = 0.0                        # a zero head: kappa = 0, the identity
    raw[1, :, 4, 4] = 1e9                        # clamped, then normalised by the sum
    return {"raw": raw}


def _run_cspn_affinity(pkg, x: dict) -> dict:
    return {"kappa": pkg.propagation.CSPN(3).normalise(x["raw"])}


def _compare_cspn_affinity(got: dict, want: dict) -> str:
    err = _close("kappa", got["kappa"], want["kappa"])
    return f"kappa relative error {err:.1e} (borders, a zero head and a clamped one included)"


def _inputs_cspn_step(gen) -> dict:
    kappa = torch.rand(2, 8, 6, 7, generator=gen, dtype=torch.float64) / 8   # non-negative, sum <= 1
    return {"kappa": kappa, "base": _rand(gen, 2, 1, 6, 7, scale=0.1, dtype=torch.float64),
            "weights": _rand(gen, 3, 2, 1, 6, 7, dtype=torch.float64)}


def _run_cspn_step(pkg, x: dict) -> dict:
    cspn = pkg.propagation.CSPN(3)
    base, kappa = x["base"].clone().requires_grad_(), x["kappa"].clone().requires_grad_()
    d, ds = None, []
    for _ in range(3):
        d = cspn.step(d, base, kappa)
        ds.append(d)
    ds = torch.stack(ds)
    (ds * x["weights"]).sum().backward()
    return {"d": ds.detach(), "grad_base": _grad(base), "grad_kappa": _grad(kappa)}


def _compare_steps(got: dict, want: dict) -> str:
    err = _close("D^1..D^3 of three steps", got["d"], want["d"])
    for name in sorted(k for k in want if k.startswith("grad_")):
        _close(f"the gradient of {name[5:]} through three steps", got[name], want[name])
    return f"three steps and their gradients, relative error {err:.1e}"


_compare_cspn_step = _compare_steps


def _inputs_dyspn_step(gen) -> dict:
    K, R = 48, 3
    w = _rand(gen, 2, K, 6, 7, scale=0.7, dtype=torch.float64)
    return {"pos": w.clamp(min=0), "mag": w.abs(), "base": _rand(gen, 2, R, 1, 6, 7, scale=0.1, dtype=torch.float64),
            "p": torch.sigmoid(_rand(gen, 3, 2, R + 1, 6, 7, dtype=torch.float64)),
            "weights": _rand(gen, 3, 2, 1, 6, 7, dtype=torch.float64)}


def _run_dyspn_step(pkg, x: dict) -> dict:
    dyspn = pkg.propagation.DySPN(3, 7)
    mag = x["mag"].clone().requires_grad_()
    A = dyspn.ring_magnitudes(mag)
    base, pos, p = (x[k].clone().requires_grad_() for k in ("base", "pos", "p"))
    d, ds = None, []
    for t in range(3):
        d = dyspn.step(d, base, pos, A, p[t])
        ds.append(d)
    ds = torch.stack(ds)
    (ds * x["weights"]).sum().backward()
    return {"A": A.detach(), "d": ds.detach(), "grad_mag": _grad(mag), "grad_base": _grad(base), "grad_pos": _grad(pos),
            "grad_pi": _grad(p)}


def _compare_dyspn_step(got: dict, want: dict) -> str:
    err = _close("ring_magnitudes (A_r)", got["A"], want["A"])
    return f"A_r (relative error {err:.1e}), " + _compare_steps(got, want)


def _grad(t: torch.Tensor) -> torch.Tensor:
    return t.grad if t.grad is not None else torch.zeros_like(t)   # no gradient at all: zeros, which differ


_REFINER_CASES = {"cspn-deep": ("cspn", True, 4.0), "cspn-last": ("cspn", False, 1.0), "control": ("control", True, 4.0)}


def _inputs_refiner_loss(gen) -> dict:
    image, target = torch.rand(2, 3, 12, 12, generator=gen), _blobs(gen, 2, 12, 12).long()
    return {"image": image, "target": target,
            **{f"state:{name}": _stand_in_state(method, gen) for name, (method, _, _) in _REFINER_CASES.items()}}


def _run_refiner_loss(pkg, x: dict) -> dict:
    out = {}
    for name, (method, deep, bw) in _REFINER_CASES.items():
        model = _stand_in_refiner(pkg, method, deep, bw, x[f"state:{name}"])
        frozen = {k: v.clone() for k, v in model.coarse.state_dict().items()}
        returned = model.train()
        flags = [returned is model, model.coarse.training, model.guidance.training]
        loss = model.training_loss(x["image"], x["target"])
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(f"training_loss must return a scalar tensor, got {type(loss).__name__} "
                            f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        loss.backward()
        coarse_grad = sum(float(p.grad.abs().sum()) for p in model.coarse.parameters() if p.grad is not None)
        drift = any(not torch.equal(v, frozen[k]) for k, v in model.coarse.state_dict().items())
        out[name] = {"flags": torch.tensor(flags + [drift]), "coarse_grad": torch.tensor(coarse_grad),
                     "loss": loss.detach(), "grad": _grad(model.guidance.weight)}
    return out


def _compare_refiner_loss(got: dict, want: dict) -> str:
    err = 0.0
    for name, (method, deep, bw) in _REFINER_CASES.items():
        returns_self, coarse_training, guidance_training, drift = got[name]["flags"].tolist()
        if not returns_self:
            raise _Mismatch("Refiner.train must return self (as nn.Module.train does)")
        if coarse_training or not guidance_training:
            raise _Mismatch("after model.train() the coarse net must be in eval mode (frozen BatchNorm) and the "
                            f"guidance net in train mode; got coarse.training={coarse_training}, "
                            f"guidance.training={guidance_training}")
        what = f"training_loss ({method}, deep_supervision={deep}, boundary_weight={bw:g})"
        err = max(err, _close(what, got[name]["loss"], want[name]["loss"]))
        if float(got[name]["grad"].abs().sum()) == 0:
            raise _Mismatch(f"{what}: no gradient reaches the guidance net (is the loss detached?)")
        err = max(err, _close(f"the guidance gradient of {what}", got[name]["grad"], want[name]["grad"]))
        if float(got[name]["coarse_grad"]) > 0:
            raise _Mismatch("the coarse net received a gradient: it must stay frozen")
        if drift:
            raise _Mismatch("the coarse net's weights or BatchNorm statistics changed during the training step: it "
                            "must stay frozen (eval mode keeps BatchNorm's running statistics)")
    return f"losses and gradients of 3 settings, relative error {err:.1e}; coarse net frozen"


def _parts(key: str):
    name = key.replace("-", "_")
    return globals()[f"_inputs_{name}"], globals()[f"_run_{name}"], globals()[f"_compare_{name}"]


_NEEDS = {"refiner-loss": ("boundary-band",)}   # the boundary-weighted loss uses the band


def draw_inputs(key: str, seed: int) -> dict:
    """The inputs of ``key``'s check drawn with ``seed`` (the references use seed 0; grading a fresh one)."""
    return _parts(key)[0](torch.Generator().manual_seed(seed))


def run_exercise(key: str, pkg, inputs: dict) -> dict:
    """A package's outputs for ``key`` on ``inputs`` (tensors only), with the random state kept."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        with torch.enable_grad():
            return _detached(_parts(key)[1](pkg, inputs))


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
    """Run the solution on the fixed inputs (seed 0) and save inputs and outputs (``python -m helpers references``)."""
    pkg = _package(package or _own_package())
    refs = {}
    for e in EXERCISES:
        inputs = draw_inputs(e.key, 0)
        refs[e.key] = {"inputs": inputs, "outputs": run_exercise(e.key, pkg, inputs)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_detached(refs), path)
    return path


def _detached(tree):
    if isinstance(tree, dict):
        return {k: _detached(v) for k, v in tree.items()}
    return tree.detach().clone().contiguous() if isinstance(tree, torch.Tensor) else tree


def outcome(key: str, outputs: dict | None, reference: dict, error: tuple[str, str] | None = None) -> Result:
    """The result of ``key`` from a package's ``outputs`` (or the ``error`` it raised: kind and
    message) against the solution's ``reference`` outputs, compared here."""
    ex = lookup(key)
    msg = None
    if error is not None:
        kind, text = error
        if kind == "not-done":
            msg = (f"{ex.label} cannot be checked yet: it needs {text.split(':')[0]} first"
                   if text.startswith("Exercise ") and not text.startswith(ex.label)
                   else f"{ex.label} is not done yet: write it in {ex.where}")
        else:
            msg = f"{ex.label} failed: {text}"
    else:
        try:
            detail = _parts(ex.key)[2](outputs, reference)
            return Result(ex.key, ex.number, ex.title, ex.points, ex.points, True, f"{ex.label}: passed: {detail}")
        except _Mismatch as exc:
            msg = f"{ex.label} failed: {exc}; edit {ex.where}"
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:   # outputs of the wrong kind
            msg = f"{ex.label} failed: its outputs could not be compared ({type(exc).__name__}: {exc}); edit {ex.where}"
    needs = [lookup(n).label for n in _NEEDS.get(ex.key, ())]
    if needs and "cannot be checked" not in msg:
        msg += f" (this check also uses {', '.join(needs)})"
    return Result(ex.key, ex.number, ex.title, 0, ex.points, False, msg)


def attempt(key: str, pkg, inputs: dict) -> tuple[dict | None, tuple[str, str] | None]:
    """Run a package's code for ``key``: (outputs, None), or (None, (kind, message)) if it raised."""
    try:
        return run_exercise(key, pkg, inputs), None
    except NotImplementedError as exc:
        return None, ("not-done", str(exc))
    except Exception as exc:  # the student's code raised: name the error and where it came from
        return None, ("raised", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                                f"{_student_frame(exc)}")


def check_one(key: str, pkg=None, refs: dict | None = None) -> Result:
    """Run one exercise's check on the shipped reference inputs; never raises for the student's errors."""
    pkg = pkg or _package(_own_package())
    refs = refs if refs is not None else load_references()
    ref = refs[lookup(key).key]
    outputs, error = attempt(lookup(key).key, pkg, ref["inputs"])
    result = outcome(key, outputs, ref["outputs"], error)
    if result.passed and lookup(key).key in _GRADCHECKS:
        try:
            _GRADCHECKS[lookup(key).key](pkg)
            result.message += "; gradcheck passed"
        except _Mismatch as exc:
            ex = lookup(key)
            result = Result(ex.key, ex.number, ex.title, 0, ex.points, False, f"{ex.label} failed: {exc}; edit {ex.where}")
    return result


def _gradcheck_cspn(pkg) -> None:
    cspn, gen = pkg.propagation.CSPN(3), torch.Generator().manual_seed(50)
    args = (_rand(gen, 1, 1, 4, 5, dtype=torch.float64), _rand(gen, 1, 1, 4, 5, dtype=torch.float64),
            torch.rand(1, 8, 4, 5, generator=gen, dtype=torch.float64) / 8)
    _gradcheck("CSPN.step", lambda d, base, k: cspn.step(d, base, k), tuple(a.requires_grad_() for a in args))


def _gradcheck_dyspn(pkg) -> None:
    dyspn, gen = pkg.propagation.DySPN(2, 5), torch.Generator().manual_seed(60)
    w = _rand(gen, 1, 24, 4, 5, dtype=torch.float64)
    args = (_rand(gen, 1, 1, 4, 5, scale=0.1, dtype=torch.float64), _rand(gen, 1, 2, 1, 4, 5, scale=0.1, dtype=torch.float64),
            w.clamp(min=0), 0.5 + torch.rand(1, 2, 4, 5, generator=gen, dtype=torch.float64),
            torch.sigmoid(_rand(gen, 1, 3, 4, 5, dtype=torch.float64)))
    _gradcheck("DySPN.step", lambda d, base, pos, A, p: dyspn.step(d, base, pos, A, p),
               tuple(a.requires_grad_() for a in args))


# in a notebook, the propagation's backward pass is also checked against finite differences
_GRADCHECKS = {"cspn-step": _gradcheck_cspn, "dyspn-step": _gradcheck_dyspn}


def _student_frame(exc: BaseException) -> str:
    tb, where = exc.__traceback__, ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if "helpers" in Path(name).parts and not name.endswith("exercises.py"):
            where = f" (at {Path(name).name}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where


def run_checks(package: str | None = None, references: str | Path = REFERENCES) -> list[Result]:
    """Every exercise's check against the package named ``package``, on the shipped references."""
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

    def forget(result):   # a cell that ran cleanly: later NameErrors are the student's own again
        if result.error_in_exec is None and result.error_before_exec is None:
            shell._workbook_exercise_error = None

    shell.set_custom_exc((ExerciseFailed, NotImplementedError, NameError), handler)
    shell.events.register("post_run_cell", forget)
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


def _worker(submission: str, inputs_file: str, out: str) -> None:
    """The grading subprocess: run the submission's code on the grader's inputs and save what it
    returns (tensors, or the error it raised); the grader compares, in its own process. Only the
    submission's own files count: an installed copy of the workbook is taken off the import path."""
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path[:] = [submission] + [p for p in sys.path if "__editable__" not in p]
    inputs = torch.load(inputs_file, map_location="cpu", weights_only=True)
    root = (Path(submission) / "helpers").resolve()
    try:
        pkg = _package("helpers")
        stray = [m.__name__ for m in vars(pkg).values() if root not in Path(m.__file__).resolve().parents]
        error = ("raised", f"helpers/{stray[0].split('.')[-1]}.py is missing from the submission") if stray else None
    except Exception as exc:   # a module that does not import
        pkg, error = None, ("raised", f"the submission's helpers package does not import: {type(exc).__name__}: {exc}")
    results = {}
    for e in EXERCISES:
        outputs, err = (None, error) if error else attempt(e.key, pkg, inputs[e.key])
        results[e.key] = {"outputs": outputs, "error": list(err) if err else None}
    torch.save(results, out)
