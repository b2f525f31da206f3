"""Each exercise's check in three parts, so that grading never trusts a submission's process:

* ``inputs(gen)`` draws small inputs (fixed ones, seed 0, for the shipped references; fresh ones
  for every grading run);
* ``run(pkg, inputs)`` runs a package's code on them and returns tensors only (the student's
  package in a subprocess when grading, the solution's for the reference);
* ``compare(got, want)`` compares the two in the grader's own process and says what differs.

Gradients are compared with the solution's, in float64 for the propagation, so a ``.detach()``
or an in-place edit fails. The refiner's training step runs with stand-in networks, so that it
does not need the U-Net or CSPN exercises. The CSPN step reads the neighbours with the student's
gather (exercise 5), and DySPN's step with the student's ring sums (exercise 8): their checks say
so when those are not done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .compare import Mismatch, Parts, close, equal, grad_of
from .inputs import blobs, rand, stand_in_refiner, stand_in_state


@dataclass(frozen=True)
class Case:
    """How one exercise is checked: draw its inputs, run a package on them, compare outputs."""

    inputs: Callable[[torch.Generator], dict]
    run: Callable[[object, dict], dict]
    compare: Callable[[dict, dict, Parts], str]


def _inputs_miou(gen) -> dict:
    pred2, target2 = (
        torch.randint(0, 2, (2, 5, 7), generator=gen),
        torch.randint(0, 2, (2, 5, 7), generator=gen),
    )
    pred3, target3 = (
        torch.randint(0, 2, (3, 4, 6), generator=gen),
        torch.randint(0, 3, (3, 4, 6), generator=gen),
    )
    target3[target3 == 2] = 1  # class 2 absent from both maps: its IoU is nan and leaves the mean
    return {"pred2": pred2, "target2": target2, "pred3": pred3, "target3": target3}


def _run_miou(pkg, x: dict) -> dict:
    m = pkg.metrics
    cm2, cm3 = (
        m.confusion_matrix(x["pred2"], x["target2"], 2),
        m.confusion_matrix(x["pred3"], x["target3"], 3),
    )
    # IoU of the student's own matrices: both functions are this one exercise, and a wrong
    # matrix is reported first (by the comparison of the matrices)
    return {
        "cm2": cm2,
        "cm3": cm3,
        "iou2": m.iou_per_class(cm2),
        "iou3": m.iou_per_class(cm3),
        "miou3": torch.tensor(m.mean_iou(cm3)),
    }


def _compare_miou(got: dict, want: dict, parts: Parts) -> str:
    err = float("nan")
    with parts.part("confusion matrices", 4):
        equal("confusion_matrix (2 classes)", got["cm2"], want["cm2"])
        equal("confusion_matrix (3 classes)", got["cm3"], want["cm3"])
    with parts.part("IoU per class", 4):
        if not torch.isnan(torch.as_tensor(got["iou3"])[2]):
            raise Mismatch(
                "iou_per_class must be nan for a class absent from prediction and ground truth "
                f"(got {float(torch.as_tensor(got['iou3'])[2]):.3g})"
            )
        err = max(
            close("iou_per_class (2 classes)", got["iou2"], want["iou2"]),
            close("iou_per_class (3 classes)", got["iou3"], want["iou3"]),
        )
    with parts.part("mean IoU", 2):
        close("mean_iou", got["miou3"], want["miou3"])
    return f"confusion matrices exact, IoU relative error {err:.1e}"


def _inputs_boundary_band(gen) -> dict:
    masks = blobs(gen, 3, 12, 14)
    masks[2] = False
    masks[2, 3:9, 4:14] = True  # touches the right border: the band runs along it
    return {"masks": masks}


def _run_boundary_band(pkg, x: dict) -> dict:
    return {f"band{w}": pkg.metrics.boundary_band(x["masks"], w) for w in (1, 2)}


def _compare_boundary_band(got: dict, want: dict, parts: Parts) -> str:
    for width in (1, 2):
        with parts.part(f"width {width}", 5):
            equal(f"boundary_band(mask, width={width})", got[f"band{width}"], want[f"band{width}"])
    return "bands exact at widths 1 and 2, border included"


def _inputs_unet_up(gen) -> dict:
    shapes = {
        "conv.block.0.weight": (5, 10, 3, 3),
        "conv.block.1.weight": (5,),
        "conv.block.1.bias": (5,),
        "conv.block.1.running_mean": (5,),
        "conv.block.3.weight": (5, 5, 3, 3),
        "conv.block.4.weight": (5,),
        "conv.block.4.bias": (5,),
        "conv.block.4.running_mean": (5,),
    }
    state = {k: rand(gen, *shape, scale=0.5) for k, shape in shapes.items()}
    for k in ("conv.block.1.running_var", "conv.block.4.running_var"):  # variances must be positive
        state[k] = 0.5 + rand(gen, 5, scale=0.5).abs()
    state["conv.block.1.num_batches_tracked"] = state["conv.block.4.num_batches_tracked"] = (
        torch.tensor(0)
    )
    return {
        "state": state,
        "x": rand(gen, 2, 6, 3, 5),
        "skip_pad": rand(gen, 2, 4, 7, 11),
        "skip_crop": rand(gen, 2, 4, 5, 9),
    }


def _run_unet_up(pkg, x: dict) -> dict:
    up = pkg.unet.Up(6, 4, 5)
    up.load_state_dict(x["state"])
    up.eval()
    with torch.no_grad():
        return {"pad": up(x["x"], x["skip_pad"]), "crop": up(x["x"], x["skip_crop"])}


def _compare_unet_up(got: dict, want: dict, parts: Parts) -> str:
    errors = []
    with parts.part("a larger skip (padding)", 8):
        errors.append(close("Up(x, skip) with a larger skip (padding)", got["pad"], want["pad"]))
    with parts.part("a smaller skip (cropping)", 7):
        errors.append(
            close("Up(x, skip) with a smaller skip (cropping)", got["crop"], want["crop"])
        )
    return f"padded and cropped skips, relative error {max(errors, default=0):.1e}"


def _inputs_cspn_affinity(gen) -> dict:
    raw = rand(gen, 2, 8, 6, 7, scale=0.5)
    raw[0, :, 2, 3] = 0.0  # a zero head: kappa = 0, the identity
    raw[1, :, 4, 4] = 1e9  # clamped, then normalised by the sum
    return {"raw": raw}


def _run_cspn_affinity(pkg, x: dict) -> dict:
    return {"kappa": pkg.propagation.CSPN(3).normalise(x["raw"])}


def _compare_cspn_affinity(got: dict, want: dict, parts: Parts) -> str:
    err = float("nan")
    with parts.part("kappa", 10):
        err = close("kappa", got["kappa"], want["kappa"])
    return f"kappa relative error {err:.1e} (borders, a zero head and a clamped one included)"


def _inputs_neighbours(gen) -> dict:
    return {
        "x3": rand(gen, 2, 2, 5, 6, dtype=torch.float64),
        "x7": rand(gen, 1, 2, 8, 9, dtype=torch.float64),
        "weights3": rand(gen, 2, 2, 8, 5, 6, dtype=torch.float64),
        "weights7": rand(gen, 1, 2, 48, 8, 9, dtype=torch.float64),
    }


def _run_neighbours(pkg, x: dict) -> dict:
    gather, window = pkg.neighbours.gather, pkg.propagation.Window
    x3, x7 = x["x3"].clone().requires_grad_(), x["x7"].clone().requires_grad_()
    g3, g7 = gather(x3, 3), gather(x7, 7)
    dilated = gather(x["x7"], window(7, 2))
    (g3 * x["weights3"]).sum().backward()
    (g7 * x["weights7"]).sum().backward()
    return {
        "g3": g3.detach(),
        "g7": g7.detach(),
        "dilated": dilated.detach(),
        "grad_x3": grad_of(x3),
        "grad_x7": grad_of(x7),
    }


def _inside(w: torch.Tensor, reach: int) -> torch.Tensor:
    """``w`` with the weights of pixels within ``reach`` of the border zeroed: no neighbour of
    the rest lies outside the image, so the centred sums of a constant map are exactly 0 there
    (in the propagation, out-of-image neighbours weigh nothing anyway)."""
    out = torch.zeros_like(w)
    out[..., reach:-reach, reach:-reach] = w[..., reach:-reach, reach:-reach]
    return out


def _exactly_zero(what: str, got: torch.Tensor, difference: str) -> None:
    """A centred sum of a constant map is exactly 0 when each difference is taken first."""
    if float(got.abs().max()) != 0.0:
        raise Mismatch(
            f"{what} must be exactly 0 (take each difference {difference} before weighting); "
            f"got up to {float(got.abs().max()):.3g}"
        )


_NEIGHBOUR = {2: "neighbour j"}  # gather's (B, C, K, H, W): say which neighbour differs


def _compare_neighbours(got: dict, want: dict, parts: Parts) -> str:
    with parts.part("3x3 window", 6):
        close("gather(x, 3)", got["g3"], want["g3"], axes=_NEIGHBOUR)
    with parts.part("7x7 window, dilated too", 5):
        close("gather(x, 7)", got["g7"], want["g7"], axes=_NEIGHBOUR, reach=3)
        close(
            "gather(x, Window(7, dilation=2))",
            got["dilated"],
            want["dilated"],
            axes=_NEIGHBOUR,
            reach=6,
        )
    with parts.part("gradients", 4):
        close("the gradient of x through gather(x, 3)", got["grad_x3"], want["grad_x3"])
        close("the gradient of x through gather(x, 7)", got["grad_x7"], want["grad_x7"])
    return "3x3, 7x7 and dilated windows exact at the borders, gradients too"


def _inputs_cspn_step(gen) -> dict:
    kappa = torch.rand(2, 8, 6, 7, generator=gen, dtype=torch.float64) / 8  # non-negative, sum <= 1
    return {
        "kappa": kappa,
        "h0": torch.rand(2, 1, 6, 7, generator=gen, dtype=torch.float64),
        "base_weights": rand(gen, 2, 1, 6, 7, dtype=torch.float64),
        "base": rand(gen, 2, 1, 6, 7, scale=0.1, dtype=torch.float64),
        "weights": rand(gen, 3, 2, 1, 6, 7, dtype=torch.float64),
    }


def _run_cspn_step(pkg, x: dict) -> dict:
    cspn = pkg.propagation.CSPN(3)
    h0, kappa = x["h0"].clone().requires_grad_(), x["kappa"].clone().requires_grad_()
    b = cspn.base(h0, kappa)
    constant = cspn.base(torch.full_like(x["h0"], 0.3), _inside(x["kappa"], 1))
    (b * x["base_weights"]).sum().backward()
    out = {
        "b": b.detach(),
        "constant": constant.detach(),
        "grad_b_h0": grad_of(h0),
        "grad_b_kappa": grad_of(kappa),
    }
    base, kappa = x["base"].clone().requires_grad_(), x["kappa"].clone().requires_grad_()
    d, ds = None, []
    for _ in range(3):
        d = cspn.step(d, base, kappa)
        ds.append(d)
    ds = torch.stack(ds)
    (ds * x["weights"]).sum().backward()
    return {**out, "d": ds.detach(), "grad_base": grad_of(base), "grad_kappa": grad_of(kappa)}


def _compare_cspn_step(got: dict, want: dict, parts: Parts) -> str:
    with parts.part("base", 3):
        close("CSPN.base(h0, kappa)", got["b"], want["b"])
        _exactly_zero("CSPN.base of a constant map", got["constant"], "H^0_j - H^0")
        close("the gradient of h0 through CSPN.base", got["grad_b_h0"], want["grad_b_h0"])
        close("the gradient of kappa through CSPN.base", got["grad_b_kappa"], want["grad_b_kappa"])
    return "base exact for a constant map, " + _compare_steps(got, want, parts, (4, 4, 4))


def _compare_steps(got: dict, want: dict, parts: Parts, points=(5, 5, 5)) -> str:
    """One step, three steps, and the gradients through them, worth ``points``."""
    errors = []
    with parts.part("the first step", points[0]):
        close("D^1 of the first step", got["d"][:1], want["d"][:1], steps_axis=0)
    with parts.part("three steps", points[1]):
        errors.append(close("D^1..D^3 of three steps", got["d"], want["d"], steps_axis=0))
    with parts.part("gradients", points[2]):
        for name in sorted(k for k in want if k.startswith("grad_") and "_b_" not in k):
            close(f"the gradient of {name[5:]} through three steps", got[name], want[name])
    return f"three steps and their gradients, relative error {max(errors, default=0):.1e}"


def _inputs_ring_sums(gen) -> dict:
    return {
        "x": rand(gen, 2, 2, 9, 10, dtype=torch.float64),
        "w": rand(gen, 2, 48, 9, 10, dtype=torch.float64).clamp(min=0),
        "weights": rand(gen, 2, 3, 2, 9, 10, dtype=torch.float64),
    }


def _run_ring_sums(pkg, x: dict) -> dict:
    ring_sums, window = pkg.neighbours.ring_sums, pkg.propagation.Window
    xs, w = x["x"].clone().requires_grad_(), x["w"].clone().requires_grad_()
    plain = ring_sums(xs, w, 7)
    (plain * x["weights"]).sum().backward()
    return {
        "plain": plain.detach(),
        "centred": ring_sums(x["x"], x["w"], 7, centred=True),
        "constant": ring_sums(torch.full_like(x["x"], 0.7), _inside(x["w"], 3), 7, centred=True),
        "dilated": ring_sums(x["x"], x["w"], window(7, 2)),
        "grad_x": grad_of(xs),
        "grad_w": grad_of(w),
    }


_RING = {1: "ring r (0-based)"}  # ring sums' (B, R, C, H, W)


def _compare_ring_sums(got: dict, want: dict, parts: Parts) -> str:
    with parts.part("ring sums", 5):
        close("ring_sums(x, w, 7)", got["plain"], want["plain"], axes=_RING, reach=3)
    with parts.part("centred", 4):
        close(
            "ring_sums(x, w, 7, centred=True)", got["centred"], want["centred"], axes=_RING, reach=3
        )
        _exactly_zero("the centred ring sums of a constant map", got["constant"], "X_j - X")
    with parts.part("dilated window", 2):
        close(
            "ring_sums(x, w, Window(7, dilation=2))",
            got["dilated"],
            want["dilated"],
            axes=_RING,
            reach=6,
        )
    with parts.part("gradients", 4):
        close("the gradient of x through ring_sums", got["grad_x"], want["grad_x"])
        close("the gradient of w through ring_sums", got["grad_w"], want["grad_w"])
    return "plain, centred and dilated ring sums and their gradients"


def _inputs_dyspn_step(gen) -> dict:
    K, R = 48, 3
    w = rand(gen, 2, K, 6, 7, scale=0.7, dtype=torch.float64)
    return {
        "pos": w.clamp(min=0),
        "mag": w.abs(),
        "base": rand(gen, 2, R, 1, 6, 7, scale=0.1, dtype=torch.float64),
        "p": torch.sigmoid(rand(gen, 3, 2, R + 1, 6, 7, dtype=torch.float64)),
        "weights": rand(gen, 3, 2, 1, 6, 7, dtype=torch.float64),
    }


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
    return {
        "A": A.detach(),
        "d": ds.detach(),
        "grad_mag": grad_of(mag),
        "grad_base": grad_of(base),
        "grad_pos": grad_of(pos),
        "grad_pi": grad_of(p),
    }


def _compare_dyspn_step(got: dict, want: dict, parts: Parts) -> str:
    err = float("nan")
    with parts.part("ring magnitudes", 5):
        err = close("ring_magnitudes (A_r)", got["A"], want["A"])
    return f"A_r (relative error {err:.1e}), " + _compare_steps(got, want, parts, (5, 7, 8))


_REFINER_CASES = {
    "cspn-deep": ("cspn", True, 4.0),
    "cspn-last": ("cspn", False, 1.0),
    "control": ("control", True, 4.0),
}


def _inputs_refiner_loss(gen) -> dict:
    image, target = torch.rand(2, 3, 12, 12, generator=gen), blobs(gen, 2, 12, 12).long()
    return {
        "image": image,
        "target": target,
        **{
            f"state:{name}": stand_in_state(method, gen)
            for name, (method, _, _) in _REFINER_CASES.items()
        },
    }


def _run_refiner_loss(pkg, x: dict) -> dict:
    out = {}
    for name, (method, deep, bw) in _REFINER_CASES.items():
        model = stand_in_refiner(pkg, method, deep, bw, x[f"state:{name}"])
        frozen = {k: v.clone() for k, v in model.coarse.state_dict().items()}
        returned = model.train()
        flags = [returned is model, model.coarse.training, model.guidance.training]
        loss = model.training_loss(x["image"], x["target"])
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise TypeError(
                f"training_loss must return a scalar tensor, got {type(loss).__name__} "
                f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}"
            )
        loss.backward()
        coarse_grad = sum(
            float(p.grad.abs().sum()) for p in model.coarse.parameters() if p.grad is not None
        )
        drift = any(not torch.equal(v, frozen[k]) for k, v in model.coarse.state_dict().items())
        out[name] = {
            "flags": torch.tensor(flags + [drift]),
            "coarse_grad": torch.tensor(coarse_grad),
            "loss": loss.detach(),
            "grad": grad_of(model.guidance.weight),
        }
    return out


def _compare_refiner_loss(got: dict, want: dict, parts: Parts) -> str:
    errors = []
    settings = {
        name: f"training_loss ({m}, deep_supervision={d}, boundary_weight={b:g})"
        for name, (m, d, b) in _REFINER_CASES.items()
    }
    # one part, not two: the train/eval flags do not depend on the inputs, so on their own they
    # would earn points for any answer, a table of the shipped references' included
    with parts.part("train mode and losses", 8):
        for name in _REFINER_CASES:
            returns_self, coarse_training, guidance_training, _ = got[name]["flags"].tolist()
            if not returns_self:
                raise Mismatch("Refiner.train must return self (as nn.Module.train does)")
            if coarse_training or not guidance_training:
                raise Mismatch(
                    "after model.train() the coarse net must be in eval mode (frozen BatchNorm) "
                    f"and the guidance net in train mode; got coarse.training={coarse_training}, "
                    f"guidance.training={guidance_training}"
                )
        for name, what in settings.items():
            errors.append(close(what, got[name]["loss"], want[name]["loss"]))
    with parts.part("gradients, the coarse net frozen", 7):
        for name, what in settings.items():
            if float(got[name]["grad"].abs().sum()) == 0:
                raise Mismatch(
                    f"{what}: no gradient reaches the guidance net (is the loss detached?)"
                )
            close(f"the guidance gradient of {what}", got[name]["grad"], want[name]["grad"])
            if float(got[name]["coarse_grad"]) > 0:
                raise Mismatch("the coarse net received a gradient: it must stay frozen")
            if bool(got[name]["flags"][3]):
                raise Mismatch(
                    "the coarse net's weights or BatchNorm statistics changed during "
                    "the training step: it must stay frozen (eval mode keeps "
                    "BatchNorm's running statistics)"
                )
    return (
        f"losses and gradients of 3 settings, relative error {max(errors, default=0):.1e}; "
        "coarse net frozen"
    )


CASES = {
    "miou": Case(_inputs_miou, _run_miou, _compare_miou),
    "boundary-band": Case(_inputs_boundary_band, _run_boundary_band, _compare_boundary_band),
    "unet-up": Case(_inputs_unet_up, _run_unet_up, _compare_unet_up),
    "cspn-affinity": Case(_inputs_cspn_affinity, _run_cspn_affinity, _compare_cspn_affinity),
    "neighbours": Case(_inputs_neighbours, _run_neighbours, _compare_neighbours),
    "cspn-step": Case(_inputs_cspn_step, _run_cspn_step, _compare_cspn_step),
    "refiner-loss": Case(_inputs_refiner_loss, _run_refiner_loss, _compare_refiner_loss),
    "ring-sums": Case(_inputs_ring_sums, _run_ring_sums, _compare_ring_sums),
    "dyspn-step": Case(_inputs_dyspn_step, _run_dyspn_step, _compare_dyspn_step),
}
