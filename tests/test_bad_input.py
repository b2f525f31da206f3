"""Runs that bad input cannot fool: each case here once gave a silent wrong result or an
unhelpful failure (issue 17); each test reproduces the case and asserts the clear outcome."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import nbformat
import numpy as np
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

import helpers.cli.execute as execute
import helpers.cli.run as runner
from helpers.analysis.selfcheck import check_improves, check_learned
from helpers.cli.main import main as run_main
from helpers.core.checkpoint import CheckpointError, atomic_write_text, safe_load
from helpers.core.config import load_config, profile_config
from helpers.data.dataset import build_datasets
from helpers.data.decoding import load_rgb, read_split_ids
from helpers.data.sources import DataError, DataSource, resolve_source
from helpers.models.propagation.propagators import CSPN, DySPN
from helpers.models.unet import UNet
from helpers.training.loop import TrainingDiverged, fit
from helpers.workbook import results, session, stages
from tests.toys import toy_data

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated(tmp_path, folders):
    """Caches and runs in a temporary folder (see ``folders``); no PETS_ROOT from the user's
    shell."""
    return tmp_path


def _open(isolated, **kwargs):
    return session.open_workbook(
        "smoke", verbose=False, runs_dir=isolated / "runs", data_dir=isolated / "data", **kwargs
    )


def _datasets(isolated, cfg, source):
    return build_datasets(cfg, source, progress=False, data_dir=isolated / "data")


def _copy(pets, dest):
    shutil.copytree(pets / "oxford-iiit-pet", dest / "oxford-iiit-pet")
    return dest


def _swap_classes(root):
    """Rewrite every trimap with pet and background swapped (and move its time forward, as a
    later edit would: some file systems keep times to the second only)."""
    for path in (root / "oxford-iiit-pet" / "annotations" / "trimaps").glob("*.png"):
        arr = np.array(Image.open(path))
        swapped = np.where(arr == 1, 2, np.where(arr == 2, 1, arr)).astype(np.uint8)
        Image.fromarray(swapped).save(path)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# ------------------------------------------------------------------ 1, 2: identity of the data
def test_same_folder_name_different_data_never_share_models(pets, isolated):
    a, b = _copy(pets, isolated / "A" / "data"), _copy(pets, isolated / "B" / "data")
    _swap_classes(b)
    wa = _open(isolated, data_root=a)
    wb = _open(isolated, data_root=b)
    assert wa.source.name == wb.source.name  # the folder names agree ...
    assert wa.data_id != wb.data_id and wa.run_dir != wb.run_dir  # ... the identities do not
    assert stages.get("coarse").checkpoint(wa) != stages.get("coarse").checkpoint(wb)
    # a copy of the same data elsewhere is the same data (pixels, not paths or times)
    c = _copy(pets, isolated / "C" / "data")
    assert _open(isolated, data_root=c).data_id == wa.data_id


def test_rewritten_files_are_decoded_again(pets, isolated):
    root = _copy(pets, isolated / "D")
    cfg = profile_config("smoke")
    source = DataSource("root", root)
    before = _datasets(isolated, cfg, source)
    _swap_classes(root)
    after = _datasets(isolated, cfg, source)
    # not the cached old masks: pet and background swapped (the boundary band, 3, stays)
    assert torch.equal(after["val"].trimaps == 1, before["val"].trimaps == 2)
    assert after["val"].fingerprint() != before["val"].fingerprint()


def test_results_of_other_data_are_not_merged(pets, isolated):
    a, b = _copy(pets, isolated / "A" / "data"), _copy(pets, isolated / "B" / "data")
    _swap_classes(b)
    stage = SimpleNamespace(
        name="coarse",
        test_metrics={"miou": 0.5},
        row=lambda: {"stage": "coarse", "miou": 0.5, "pet_iou": 0.4, "boundary_iou": 0.3},
    )
    wa = _open(isolated, data_root=a)
    wb = _open(isolated, data_root=b)
    results.record_results(wa, stage)
    doc = results.record_results(wb, SimpleNamespace(**{**vars(stage), "name": "cspn"}))
    assert doc["data_source"] == wb.data_id and set(doc["stages"]) == {"cspn"}


# ------------------------------------------------------------------ 3: overlap and repeats
def test_test_images_inside_trainval_are_refused_unless_allowed(pets, isolated):
    root = _copy(pets, isolated / "E")
    ann = root / "oxford-iiit-pet" / "annotations"
    test_lines = (ann / "test.txt").read_text().splitlines()
    (ann / "trainval.txt").write_text(
        (ann / "trainval.txt").read_text() + "\n".join(test_lines[:2]) + "\n"
    )
    source = DataSource("root", root)
    with pytest.raises(DataError, match=r"2 image\(s\) are listed in both .*allow_split_overlap"):
        _datasets(isolated, profile_config("smoke"), source)
    ds = _datasets(isolated, profile_config("smoke", allow_split_overlap=True), source)
    assert len(ds["test"]) == 4


def test_repeated_ids_are_dropped_with_a_count(pets, isolated):
    root = _copy(pets, isolated / "F")
    ann = root / "oxford-iiit-pet" / "annotations"
    lines = (ann / "trainval.txt").read_text().splitlines()
    (ann / "trainval.txt").write_text("\n".join(lines + lines[:3]) + "\n")
    with pytest.warns(UserWarning, match="3 line"):
        ids = read_split_ids(root, "trainval.txt")
    assert len(ids) == len(set(ids)) == 14


# ------------------------------------------------------------------ 4: divergence
def test_a_diverged_run_stops_and_is_never_saved_as_finished(tmp_path):
    torch.manual_seed(0)
    net = UNet(3, 2, width=4, depth=1)
    calls = {"n": 0}

    def loss_fn(image, target):
        calls["n"] += 1
        loss = torch.nn.functional.cross_entropy(net(image), target)
        # batches 1-3 fine (epoch 1), then NaN
        return loss * float("nan") if calls["n"] > 3 else loss

    ckpt = tmp_path / "m.pt"
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2.*learning rate"):
        fit(
            net,
            train_set=toy_data(12),
            val_set=toy_data(4, seed=1),
            epochs=3,
            lr=1e-3,
            batch_size=4,
            checkpoint=ckpt,
            spec={"v": 1},
            progress=False,
            loss_fn=loss_fn,
        )
    state = safe_load(ckpt)
    assert state["epoch"] == 1 and not state["finished"]  # the last good epoch, unfinished
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


# ------------------------------------------------------------------ 5: propagation inputs
def test_propagation_refuses_nan_and_out_of_range_inputs():
    h0 = torch.softmax(torch.randn(2, 2, 9, 9), 1)
    w, pi = torch.randn(2, 48, 9, 9), torch.randn(2, 24, 9, 9)
    nan_w = w.clone()
    nan_w[0, 3, 4, 4] = float("nan")
    with pytest.raises(ValueError, match="affinities hold NaN"):
        DySPN(6)(h0, nan_w, pi)
    with pytest.raises(ValueError, match="affinities hold NaN"):
        CSPN(6)(h0, torch.full((2, 8, 9, 9), float("nan")))
    nan_pi = pi.clone()
    nan_pi[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="attention hold NaN"):
        DySPN(6)(h0, w, nan_pi)
    with pytest.raises(
        ValueError, match=r"probabilities in \[0, 1\]; got values from .* to 1\.\d+"
    ):
        DySPN(6)(h0 * 2, w, pi)
    with pytest.raises(ValueError, match="probabilities"):
        CSPN(6)(torch.where(h0 > 0.5, float("nan"), h0), torch.randn(2, 8, 9, 9))
    with pytest.raises(ValueError, match=r"attention must be .* got \(3, 24, 9, 9\)"):
        DySPN(6)(h0, w, torch.randn(3, 24, 9, 9))
    with pytest.raises(ValueError, match=r"affinities must be \(B, 48, H, W\)"):
        DySPN(6)(h0, torch.randn(1, 48, 9, 9), pi)
    # infinities are legitimate (clamped, or a saturated sigmoid) and still give probabilities
    out = DySPN(6)(
        h0, w.masked_fill(w > 1, float("inf")), pi.masked_fill(pi > 1, float("-inf"))
    ).final
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "prop,args",
    [
        (CSPN(6), (torch.zeros(0, 8, 5, 5),)),
        (DySPN(6), (torch.zeros(0, 48, 5, 5), torch.zeros(0, 24, 5, 5))),
    ],
)
def test_an_empty_batch_propagates_to_an_empty_batch(prop, args):
    out = prop(torch.zeros(0, 2, 5, 5), *args)
    assert out.final.shape == (0, 2, 5, 5) and len(out.maps) == 7


# ------------------------------------------------------------------ 6, 7: data folder settings
def test_empty_pets_root_is_an_error_not_the_synthetic_data(isolated, monkeypatch, capsys):
    monkeypatch.setenv("PETS_ROOT", "")
    with pytest.raises(DataError, match="PETS_ROOT is set but empty"):
        resolve_source(load_config("smoke"), verbose=False, data_dir=isolated / "data")
    assert not (isolated / "data").exists()  # nothing generated in its place
    with pytest.raises(SystemExit) as exit_:
        run_main(["run", "--data-root", ""])
    # refused for being empty (read as "." it would fail later, for another reason)
    assert exit_.value.code == 2 and "--data-root is set but empty" in capsys.readouterr().err


def test_relative_pets_root_is_found_from_where_the_user_started(pets, isolated, monkeypatch):
    start = isolated / "project"
    _copy(pets, start / "mydata")
    (start / "notebooks").mkdir()
    monkeypatch.chdir(start / "notebooks")  # where a kernel runs
    monkeypatch.setenv("PETS_ROOT", "mydata")
    with pytest.raises(DataError, match="looked in"):
        resolve_source(load_config("smoke"), verbose=False)
    monkeypatch.setenv("WORKBOOK_START_DIR", str(start))  # the runner records where it was started
    assert resolve_source(load_config("smoke"), verbose=False).root == (start / "mydata").resolve()


def test_only_matching_nothing_is_an_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "00_a.ipynb").write_text("{}")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    with pytest.raises(SystemExit) as exc:
        run_main(["run", "--profile", "smoke", "--only", "99"])
    assert (
        exc.value.code == 2
        and "--only 99 matches no notebook; the notebooks are 00_a" in capsys.readouterr().err
    )


def test_results_from_an_earlier_run_are_marked(tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {
                "data_source": "synthetic@x",
                "seed": 0,
                "stages": {
                    "coarse": {
                        "miou": 0.7,
                        "pet_iou": 0.6,
                        "boundary_iou": 0.5,
                        "recorded_at": time.time() - 3600,
                    },
                    "cspn": {
                        "miou": 0.8,
                        "pet_iou": 0.7,
                        "boundary_iou": 0.6,
                        "recorded_at": time.time() + 1,
                    },
                },
            }
        )
    )
    runner._print_results(path, "smoke", time.time())
    out = capsys.readouterr().out
    assert "coarse" in out and "*" in out.split("coarse")[1].splitlines()[0]
    assert "*" not in out.split("cspn")[1].splitlines()[0]
    assert "recorded by an earlier run, not this one (1 of 2 stages)" in out


# ------------------------------------------------------------------ 8, 9: settings checked up front
def _nb(path, *sources):
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"WORKBOOK_PROFILE": "gpu"}, "WORKBOOK_PROFILE='gpu' is not a profile"),
        ({"WORKBOOK_SEED": str(2**33)}, "WORKBOOK_SEED=8589934592 is outside"),
        ({"WORKBOOK_SEED": "abc"}, "WORKBOOK_SEED='abc' is not an integer"),
    ],
)
def test_bad_profile_or_seed_stop_before_any_notebook(tmp_path, monkeypatch, capsys, env, message):
    _nb(tmp_path / "00_a.ipynb", "print(1)")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit):
        run_main(["run"])
    assert message in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_seed_range_is_checked_where_notebooks_read_it(monkeypatch):
    monkeypatch.setenv("WORKBOOK_SEED", "-1")
    with pytest.raises(ValueError, match=r"WORKBOOK_SEED.*0 \.\. 2\*\*32 - 1"):
        load_config("smoke")


def test_full_profile_on_a_cpu_warns_with_an_estimate(tmp_path, monkeypatch, capsys):
    _nb(tmp_path / "00_a.ipynb", "print(1)")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "estimate_cpu_hours", lambda profile: 42.0)
    assert run_main(["run", "--profile", "full"]) == 0
    assert "the full profile would take about 42 hours on this CPU" in capsys.readouterr().out


def test_the_cpu_estimate_counts_real_training_steps(monkeypatch):
    """Every timed step is counted as often as training runs it. With each 2-image step timed
    at 1 s (measured timings depend on the machine's load), the smoke profile is a known count:
    24 training images at batch 4 are 12 two-image steps per epoch; the coarse U-Net trains 4
    epochs, and its 1 more epoch (the coarse net trained on) plus the 3 refiners 1 epoch each:
    (4 + 1 + 3) x 12 = 96 s."""
    from helpers.workbook import timing

    monkeypatch.setattr(timing, "step_seconds", lambda model, images, targets: 1.0)
    assert runner.estimate_cpu_hours("smoke") * 3600 == pytest.approx(96.0)


def test_a_cell_time_out_is_one_line_with_what_to_do(tmp_path):
    _nb(tmp_path / "02_slow.ipynb", "x = 1", "import time\ntime.sleep(30)")
    with pytest.raises(
        execute.NotebookFailed,
        match=r"02_slow.ipynb: cell 1 ran longer than the limit of 3 s.*--profile cpu",
    ):
        execute.run_notebook(tmp_path / "02_slow.ipynb", tmp_path / "out", timeout_s=3)


# ------------------------------------------------------------------ 10, 11: runner messages
def test_the_error_message_keeps_the_file_name_and_never_suggests_unsafe_loading(tmp_path):
    bad = tmp_path / "m.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as exc:
        safe_load(bad)
    assert str(bad) in str(exc.value) and "weights_only" not in str(exc.value)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"state_dict": Evil(), "spec": {}}, bad)
    with pytest.raises(CheckpointError, match="refused .loading it could run code") as exc:
        safe_load(bad)
    assert "weights_only" not in str(exc.value)
    # inside a notebook: the runner reports the error's own message, in full, without torch's hint
    _nb(
        tmp_path / "01_ckpt.ipynb",
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom helpers.core.checkpoint import "
        "safe_load\n"
        f"safe_load({str(bad)!r})",
    )
    with pytest.raises(execute.NotebookFailed) as exc:
        execute.run_notebook(tmp_path / "01_ckpt.ipynb", tmp_path / "out", timeout_s=120)
    assert "CheckpointError: checkpoint" in str(exc.value) and str(bad) in str(exc.value)
    assert "weights_only" not in str(exc.value)


def test_a_failure_keeps_the_last_good_notebook_and_names_the_failed_copy(tmp_path):
    nb = tmp_path / "00_a.ipynb"
    _nb(nb, "print('good run')")
    out = tmp_path / "out"
    execute.run_notebook(nb, out, timeout_s=120)
    good = (out / "00_a.ipynb").read_text()
    _nb(nb, "raise ValueError('bad run')")
    with pytest.raises(execute.NotebookFailed, match=r"00_a.failed.ipynb"):
        execute.run_notebook(nb, out, timeout_s=120)
    assert (out / "00_a.ipynb").read_text() == good and "bad run" in (
        out / "00_a.failed.ipynb"
    ).read_text()
    _nb(nb, "print('fixed')")
    execute.run_notebook(nb, out, timeout_s=120)
    assert not (out / "00_a.failed.ipynb").exists()  # a stale failure does not outlive the fix


def test_a_dead_kernel_points_to_the_notebook_it_left(tmp_path):
    _nb(tmp_path / "03_dies.ipynb", "print('before')", "import os\nos._exit(1)")
    with pytest.raises(execute.NotebookFailed, match=r"the kernel died.*03_dies.failed.ipynb"):
        execute.run_notebook(tmp_path / "03_dies.ipynb", tmp_path / "out", timeout_s=120)
    assert "before" in (tmp_path / "out" / "03_dies.failed.ipynb").read_text()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_and_ctrl_c_stop_the_runner_cleanly(tmp_path, sig):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _nb(nbs / "00_wait.ipynb", "import time\ntime.sleep(60)")
    script = (
        "import sys, helpers.cli.run as r; from helpers.cli.main import main; from pathlib import "
        "Path\n"
        f"r.NOTEBOOK_DIR = Path({str(nbs)!r}); r.REPO_ROOT = Path({str(tmp_path)!r})\n"
        "sys.exit(main(['run', '--profile', 'smoke']))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while (
        time.time() < deadline and not (tmp_path / "runs" / "smoke" / "00_wait.kernel.log").exists()
    ):
        time.sleep(0.2)
    time.sleep(3)  # the cell is running
    import signal

    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"interrupted ({sig}) during 00_wait.ipynb" in err and "Traceback" not in err


# ------------------------------------------------------------------ 12: loader edge cases
def test_list_file_with_a_byte_order_mark(pets, isolated):
    root = _copy(pets, isolated / "G")
    path = root / "oxford-iiit-pet" / "annotations" / "test.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ids = read_split_ids(root, "test.txt")
    assert len(ids) == 4 and not ids[0].startswith("\ufeff")
    assert len(_datasets(isolated, profile_config("smoke"), DataSource("root", root))["test"]) == 4


def test_an_oversized_image_names_the_file(pets, isolated, monkeypatch):
    root = _copy(pets, isolated / "H")
    image_id = read_split_ids(root, "test.txt")[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # every image is "too large" now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=rf"too large to decode safely: .*{image_id}.jpg"):
            load_rgb(root / "oxford-iiit-pet" / "images" / f"{image_id}.jpg")


def test_an_empty_list_file_says_so(pets, isolated):
    root = _copy(pets, isolated / "I")
    (root / "oxford-iiit-pet" / "annotations" / "test.txt").write_text("# no images yet\n")
    with pytest.raises(DataError, match=r"test.txt lists no images"):
        _datasets(isolated, profile_config("smoke"), DataSource("root", root))


# ------------------------------------------------------------------ 13: concurrent writers
def test_concurrent_atomic_writes_never_collide(tmp_path):
    path, errors = tmp_path / "results.json", []

    def writer(k):
        try:
            for i in range(100):
                atomic_write_text(json.dumps({"writer": k, "i": i}), path)
        except Exception as exc:  # the bug: both writers renamed one shared temporary file
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and json.loads(path.read_text())["i"] == 99
    assert not list(tmp_path.glob(".*tmp"))


def test_concurrent_results_updates_keep_every_stage(pets, isolated):
    """Two processes recording different stages into one results.json: none is lost."""
    root = _copy(pets, isolated / "J")
    script = (
        "import sys, helpers.workbook.session as w, helpers.workbook.results as r\n"
        "from types import SimpleNamespace as N\n"
        f"wb = w.open_workbook('smoke', data_root={str(root)!r}, verbose=False, "
        f"runs_dir={str(isolated / 'runs')!r}, data_dir={str(isolated / 'data')!r})\n"
        "for i in range(25):\n"
        "    name = f'{sys.argv[1]}{i}'\n"
        "    r.record_results(wb, N(name=name, test_metrics={}, row=lambda: {'miou': 0.5}))\n"
    )
    _open(isolated, data_root=root)  # decode once, before the race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, tag], cwd=REPO, stderr=subprocess.PIPE, text=True
        )
        for tag in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    recorded = json.loads((isolated / "runs" / "smoke" / "results.json").read_text())["stages"]
    assert set(recorded) == {f"{t}{i}" for t in "ab" for i in range(25)}


def test_a_corrupt_results_file_is_moved_aside(pets, isolated):
    wb = _open(isolated, data_root=_copy(pets, isolated / "K"))
    path = results.results_path(wb)
    path.parent.mkdir(parents=True)
    path.write_text('{"stages": {"coarse": ')  # a half-written file from a crash
    stage = SimpleNamespace(name="cspn", test_metrics={}, row=lambda: {"miou": 0.5})
    with pytest.warns(UserWarning, match="could not be read"):
        doc = results.record_results(wb, stage)
    assert (
        set(doc["stages"]) == {"cspn"}
        and len(list(path.parent.glob("results.corrupt-*.json"))) == 1
    )


# ------------------------------------------------------------------ 14: honest self-checks
class _Split:
    def __init__(self, n, targets):
        self.targets, self.n = targets, n

    def __len__(self):
        return self.n


def _bench(profile, n_train, n_val):
    targets = torch.zeros(n_val, 8, 8, dtype=torch.long)
    targets[:, :3] = 1
    return SimpleNamespace(
        cfg=SimpleNamespace(profile=profile),
        data={"train": range(n_train), "val": _Split(n_val, targets)},
    )


def test_learning_checks_are_skipped_on_small_data_and_explain_failures(capsys):
    poor = SimpleNamespace(val_metrics={"miou": 0.2})
    check_learned(poor, _bench("smoke", 100, 100))  # seconds of training: not asserted
    check_learned(poor, _bench("cpu", 12, 6))  # a dozen real images: not asserted
    assert capsys.readouterr().out.count("learning check skipped") == 2
    with pytest.raises(AssertionError, match="did not learn. Check the data"):
        check_learned(poor, _bench("cpu", 100, 40))
    check_learned(SimpleNamespace(val_metrics={"miou": 0.9}), _bench("cpu", 100, 40))
    assert "learning check passed" in capsys.readouterr().out
    worse, base = (
        SimpleNamespace(val_metrics={"miou": 0.6}),
        SimpleNamespace(val_metrics={"miou": 0.7}),
    )
    check_improves(worse, base, _bench("cpu", 100, 40), "CSPN")  # 40 validation images: too few
    check_improves(
        SimpleNamespace(val_metrics={"miou": 0.695}), base, _bench("cpu", 100, 60), "CSPN"
    )  # a tie
    assert "a tie" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="CSPN scored 0.600 .* made the map worse"):
        check_improves(worse, base, _bench("cpu", 100, 60), "CSPN")


def test_a_failed_copy_never_shows_committed_outputs_as_this_runs(tmp_path):
    nb = new_notebook(
        cells=[new_code_cell("raise ValueError('fails first')"), new_code_cell("print('later')")]
    )
    nb.cells[1].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="OUTPUT COMMITTED EARLIER\n")
    ]
    nb.cells[1].execution_count = 7
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, tmp_path / "05_x.ipynb")
    with pytest.raises(execute.NotebookFailed, match="cell 0 failed: ValueError: fails first"):
        execute.run_notebook(tmp_path / "05_x.ipynb", tmp_path / "out", timeout_s=120)
    failed = nbformat.read(tmp_path / "out" / "05_x.failed.ipynb", as_version=4)
    assert not failed.cells[1].outputs and failed.cells[1].execution_count is None
