"""The fused Triton propagation kernels against the PyTorch path, on the CPU and on CUDA.

Triton runs kernels on CPU tensors with ``TRITON_INTERPRET=1``; the variable must be set before
Triton compiles anything, so these tests run in a fresh interpreter (a subprocess) with it set.
The kernels are the CUDA path; this is how CI checks them without a GPU. Where CUDA is available
the same checks also run compiled, on the GPU (``-k cuda``), against the PyTorch path there.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parent.parent


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not __import__("torch").cuda.is_available(), reason="compiled kernels need CUDA"
        ),
    ),
]


def run_kernel_check(code: str, device: str) -> str:
    """Run ``code`` in a fresh interpreter with ``DEVICE`` set: the Triton interpreter on the CPU,
    compiled kernels on CUDA (the inputs are drawn on the CPU either way, so both see the same)."""
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    code = f"DEVICE = {device!r}\n" + textwrap.dedent(code)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_match_the_pytorch_path_forward_and_backward(device):
    out = run_kernel_check(
        """

        import torch
        from helpers.models.propagation import kernels, selfcheck
        from helpers.models.propagation.propagators import CSPN, DySPN

        # the kernels' own self-check runs first, before the launches below are counted
        where = DEVICE if DEVICE == "cpu" else "cuda:0"
        assert selfcheck.kernel_problem(where, "torch.float32") is None
        launched, fused = [0], kernels._FusedStep.apply
        kernels._FusedStep.apply = lambda *args: (
            launched.__setitem__(0, launched[0] + 1),
            fused(*args),
        )[1]
        g = torch.Generator().manual_seed(0)
        for classes in (2, 3):
            h0 = torch.softmax(3 * torch.randn(2, classes, 9, 11, generator=g), 1)
            for make, extra in (
                (lambda b: CSPN(4, backend=b), (torch.randn(2, 8, 9, 11, generator=g),)),
                (
                    lambda b: DySPN(4, 7, backend=b),
                    (
                        torch.randn(2, 48, 9, 11, generator=g),
                        torch.randn(2, 16, 9, 11, generator=g),
                    ),
                ),
                (
                    lambda b: DySPN(3, 5, backend=b),
                    (torch.randn(2, 24, 9, 11, generator=g), torch.randn(2, 9, 9, 11, generator=g)),
                ),
                # rings 2 and 3 at distances 4 and 6: most neighbours of a 9 x 11 map fall outside
                (
                    lambda b: DySPN(3, 7, backend=b, dilation=2),
                    (
                        torch.randn(2, 48, 9, 11, generator=g),
                        torch.randn(2, 12, 9, 11, generator=g),
                    ),
                ),
            ):
                maps, grads = {}, {}
                for backend in ("torch", "triton"):
                    inputs = [t.to(DEVICE, copy=True).requires_grad_() for t in (h0, *extra)]
                    res = make(backend)(*inputs)
                    weights = torch.linspace(-1, 1, res.final.numel(), device=DEVICE).view_as(
                        res.final
                    )
                    # every iteration's gradient path
                    loss = sum((m * weights).sum() for m in res.maps[1:])
                    loss.backward()
                    maps[backend], grads[backend] = (
                        [m.detach() for m in res.maps],
                        [t.grad for t in inputs],
                    )
                for a, b in zip(maps["torch"] + grads["torch"], maps["triton"] + grads["triton"]):
                    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
                # the range guarantee holds on the kernel path too
                assert all(m.min() >= -1e-6 and m.max() <= 1 + 1e-6 for m in maps["triton"])
        assert launched[0] == 2 * (3 + 3 + 2 + 2)  # every step after the first ran as a kernel
        print("ok")
    """,
        device,
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_keep_constant_maps_exactly_and_mask_the_borders(device):
    out = run_kernel_check(
        """

        import torch
        from helpers.models.propagation.propagators import CSPN, DySPN

        g = torch.Generator().manual_seed(1)
        constant = torch.full((1, 2, 6, 7), 0.25)
        constant[:, 0] = 0.75
        constant = constant.to(DEVICE)
        cspn = CSPN(6, backend="triton")(
            constant, 5 * torch.randn(1, 8, 6, 7, generator=g).to(DEVICE)
        )
        dyspn = DySPN(6, backend="triton")(
            constant,
            5 * torch.randn(1, 48, 6, 7, generator=g).to(DEVICE),
            torch.randn(1, 24, 6, 7, generator=g).to(DEVICE),
        )
        dilated = DySPN(6, backend="triton", dilation=2)(
            constant,
            5 * torch.randn(1, 48, 6, 7, generator=g).to(DEVICE),
            torch.randn(1, 24, 6, 7, generator=g).to(DEVICE),
        )
        assert all(torch.equal(m, constant) for m in cspn.maps + dyspn.maps + dilated.maps)
        # a map that is 1 in one corner: nothing of it appears at the far side (no wrap-around)
        h0 = torch.zeros(1, 2, 6, 7)
        h0[:, 0] = 1
        h0[0, :, 0, 0] = torch.tensor([0.0, 1.0])
        h0, raw = h0.to(DEVICE), torch.full((1, 8, 6, 7), 10.0, device=DEVICE)
        out = CSPN(1, backend="triton")(h0, raw).final
        ref = CSPN(1, backend="torch")(h0, raw).final
        torch.testing.assert_close(out, ref)
        assert out[0, 1, -1].abs().max() == 0 and out[0, 1, :, -1].abs().max() == 0
        print("ok")
    """,
        device,
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_carry_the_confidence_forward_and_backward(device):
    """NLSPN's confidence scales the weights before the steps: the kernel path must give the
    PyTorch path's maps and gradients, the confidence's own gradient included."""
    out = run_kernel_check(
        """

        import torch
        from helpers.models.propagation.propagators import CSPN, DySPN

        g = torch.Generator().manual_seed(3)
        h0 = torch.softmax(3 * torch.randn(2, 2, 9, 11, generator=g), 1)
        conf = 2 * torch.randn(2, 1, 9, 11, generator=g)
        for make, extra in (
            (lambda b: CSPN(3, backend=b), (torch.randn(2, 8, 9, 11, generator=g),)),
            (
                lambda b: DySPN(3, 7, backend=b),
                (torch.randn(2, 48, 9, 11, generator=g), torch.randn(2, 12, 9, 11, generator=g)),
            ),
        ):
            maps, grads = {}, {}
            for backend in ("torch", "triton"):
                inputs = [t.to(DEVICE, copy=True).requires_grad_() for t in (h0, *extra, conf)]
                res = make(backend)(*inputs[:-1], raw_confidence=inputs[-1])
                sum(
                    (m * torch.linspace(-1, 1, m.numel(), device=DEVICE).view_as(m)).sum()
                    for m in res.maps[1:]
                ).backward()
                maps[backend], grads[backend] = (
                    [m.detach() for m in res.maps],
                    [t.grad for t in inputs],
                )
            for a, b in zip(maps["torch"] + grads["torch"], maps["triton"] + grads["triton"]):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            assert grads["triton"][-1].abs().max() > 0
        print("ok")
    """,
        device,
    )
    assert out.strip() == "ok"


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_inputs_accumulate_in_float32(device):
    out = run_kernel_check(
        """

        import torch
        from helpers.models.propagation.propagators import DySPN

        g = torch.Generator().manual_seed(2)
        h0 = torch.softmax(torch.randn(1, 2, 8, 8, generator=g), 1)
        raw, att = torch.randn(1, 48, 8, 8, generator=g), torch.randn(1, 24, 8, 8, generator=g)
        h0, raw, att = h0.to(DEVICE), raw.to(DEVICE), att.to(DEVICE)
        half = DySPN(6, backend="triton")(h0.bfloat16(), raw.bfloat16(), att.bfloat16()).final
        assert half.dtype == torch.float32
        # the same bf16-rounded inputs propagated in float32 by the PyTorch path: only float32
        # rounding may differ (storing or summing in bf16 would be off by about 1e-3 per step)
        ref = DySPN(6, backend="torch")(
            h0.bfloat16().float(), raw.bfloat16().float(), att.bfloat16().float()
        ).final
        torch.testing.assert_close(half, ref, atol=1e-5, rtol=0)
        print("ok")
    """,
        device,
    )
    assert out.strip() == "ok"


def test_auto_backend_is_pytorch_on_the_cpu_and_triton_needs_cuda_or_the_interpreter(monkeypatch):
    import torch

    from helpers.models.propagation import CSPN

    assert not CSPN(2).uses_kernel(torch.zeros(1, device="cpu"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        CSPN(2, backend="triton").uses_kernel(torch.zeros(1))
    with pytest.raises(ValueError, match="backend must be one of"):
        CSPN(2, backend="cuda")
    # float64 (gradcheck) stays on the PyTorch path even on CUDA: the kernels compute in float32
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda")))
    assert not CSPN(2).uses_kernel(torch.zeros(1, dtype=torch.float64))


# a kernel that fails to compile (it raises) and one that computes something slightly different
BROKEN_KERNELS = {
    "raises": "def broken(*args, **kwargs):\n    raise RuntimeError('PTX assembly failed')\n",
    "wrong": "def broken(*args, **kwargs):\n    return fused(*args, **kwargs) * 1.001\n",
}


@pytest.mark.parametrize("fault", sorted(BROKEN_KERNELS))
def test_kernels_that_fail_their_self_check_fall_back_to_the_pytorch_path(fault):
    """On a GPU whose compiler or Triton differs, the fused kernels may not compile or may compute
    something else: the first propagation checks them against the PyTorch path, says so in one
    line, and every refiner then trains on the PyTorch path, exactly as with backend torch."""
    code = (
        "import torch\n"
        "from helpers.models.propagation import kernels\n"
        "fused = kernels.fused_step\n"
        + BROKEN_KERNELS[fault]
        + "kernels.fused_step = broken\n"
        + textwrap.dedent(
            """
            from toys import toy_data
            from helpers.models.coarse import CoarseSegmenter
            from helpers.models.refiner import Refiner
            from helpers.training.loop import fit

            def train(method, backend):
                torch.manual_seed(0)
                coarse = CoarseSegmenter(classes=2, width=4, depth=2, coarse_size=16)
                model = Refiner(coarse, method=method, width=4, depth=2, iterations=2,
                                backend=backend)
                history = fit(model, train_set=toy_data(6), val_set=toy_data(4, seed=1),
                              epochs=1, lr=1e-3, batch_size=3, device=DEVICE, progress=False,
                              loss_fn=model.training_loss)
                return model, history

            for method in ("cspn", "dyspn"):
                model, history = train(method, "triton")
                assert model.propagator.last_backend == "torch", model.propagator.last_backend
                reference, expected = train(method, "torch")
                assert history.train_loss == expected.train_loss, method
                for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
                    assert torch.equal(a, b), method
            print("ok")
            """
        )
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.run(
        [sys.executable, "-c", "DEVICE = 'cpu'\n" + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    said = [line for line in lines if "self-check" in line]
    assert len(said) == 1, lines  # once per device and dtype, not per step or per model
    assert said[0].startswith("the fused Triton kernels failed their self-check on cpu (")
    why = {"raises": "RuntimeError: PTX assembly failed", "wrong": "differs from the PyTorch path"}
    assert why[fault] in said[0] and said[0].endswith("(the same numbers, slower)")


def test_kernels_that_pass_their_self_check_run():
    out = run_kernel_check(
        """
        import torch
        from helpers.models.propagation import CSPN, selfcheck

        h0 = torch.softmax(torch.randn(1, 2, 6, 7), 1)
        model = CSPN(2, backend="triton")
        # the first use is often an evaluation, in inference mode: the check runs anyway
        with torch.inference_mode():
            model(h0, torch.randn(1, 8, 6, 7))
        assert model.last_backend == "triton"
        assert selfcheck.kernel_problem(str(h0.device), str(h0.dtype)) is None
        print("ok")
        """,
        "cpu",
    )
    assert out.strip() == "ok"
