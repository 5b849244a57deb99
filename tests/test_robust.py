"""Issue 7: kill at any moment and lose nothing, divergence, the bad-input catalogue, untrusted
files. Every bad input must end as one line on stderr and exit status 2, with nothing already
in the study folder lost or left half-written."""

from __future__ import annotations

import ast
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab import cli
from normlab.config import StudyConfig, TrainOptions, Variant, parse_variants
from normlab.core.models import Net
from normlab.core.train import load_checkpoint, make_optimizer
from normlab.data import MNIST_FILES
from normlab.errors import NormlabError
from normlab.run.executors import ctrl_c_deferred, ctrl_c_held, pool_context
from normlab.run.study import prepare_folder
from normlab.store.results import load_state_dict, read_json, read_metrics, read_predictions
from tests.conftest import (
    REPO,
    assert_one_line_error,
    cli_env,
    main_in_process,
    normlab_cmd,
    run_cli,
)

SMALL = ["--limit-train", "512", "--limit-test", "256", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tmp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def comparable_metrics(run: Path) -> list[dict[str, float]]:
    """metrics.csv without the wall-clock column, the only one allowed to differ."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(run)]


@pytest.fixture
def finished_study(mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> list:
    """A finished one-epoch study folder and the CLI arguments that made it."""
    out = tmp_path / "study"
    args = ["run", "--data-dir", mnist_dir, "--variants", "bn", "--epochs", "1", *SMALL]
    code, _, err = main_in_process(capsys, *args, "--out", out)
    assert code == 0, err
    return [out, args]


# --- 1. Kill at any moment, lose nothing ----------------------------------------------------


def descendants(pid: int) -> list[int]:
    """The processes `pid` started and the ones they started (Linux /proc: the pool's workers
    are children of its fork server), but for multiprocessing's resource tracker, which ends on
    its own once its parent has gone."""
    found = []
    with contextlib.suppress(FileNotFoundError):  # ended while being read
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = [int(c) for c in (task / "children").read_text().split()]
            found += [c for c in children if b"resource_tracker" not in cmdline(c)]
    return found + [d for c in found for d in descendants(c)]


def cmdline(pid: int) -> bytes:
    """`pid`'s command line; empty once it has ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, parent, ...); none once
    `pid` has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return []


def parent(pid: int) -> int | None:
    """`pid`'s parent process; None once it has ended."""
    fields = stat(pid)
    return int(fields[1]) if fields else None


def alive(pid: int) -> bool:
    """Whether `pid` still runs: gone, or a zombie its (re)parent has not reaped, is not."""
    fields = stat(pid)
    return bool(fields) and fields[0] != "Z"


def gone_soon(pids: list[int], seconds: float = 10) -> bool:
    """Whether every one of `pids` ends within `seconds`. The fork server ends on its own once
    the driver has gone, and the end of its exit can come after the test has woken: closing
    its end of the stderr pipe wakes the test, which may take the core before the server has
    left the kernel's exit path (seen here as state R, reparented, under load)."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("when", ["workers starting", "runs training"])
def test_ctrl_c_stops_a_pool_of_workers_at_once(
    mnist_dir: Path, tmp_path: Path, when: str, default_ctrl_c: None
):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends the running runs
    and the queued ones with one line, whether the workers are still starting or training: the
    pool used to wait for every submitted run, so an interrupted sweep went on training."""
    out = tmp_path / "study"
    args = ["run", "--data-dir", mnist_dir, "--variants", "bn,gn,ln,in", "--epochs", "50"]
    args += ["--limit-train", "1024", "--limit-test", "256", "--workers", "2", "--out", out]
    proc = subprocess.Popen(
        normlab_cmd(*args),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    procs: list[int] = []  # the fork server and the workers
    try:
        started = (
            (lambda: len(descendants(proc.pid)) >= 3)  # the fork server and two workers
            if when == "workers starting"
            else (lambda: bool(list(out.glob("*/seed0/checkpoint.pt"))))
        )
        while not started() and proc.poll() is None:
            time.sleep(0.05)
        procs = descendants(proc.pid)
        server = [pid for pid in procs if parent(pid) == proc.pid]  # workers are its children
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        # looked at before the clean-up below kills what is left
        assert len(server) == 1, server
        running = [pid for pid in procs if pid not in server and alive(pid)]
        server_gone = gone_soon(server)
    finally:
        for pid in [proc.pid, *procs]:  # a failing run must not leave workers training
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines()[-1].startswith("normlab: interrupted; finished")
    assert "Traceback" not in err.decode()
    assert not running  # the driver waits for its workers' ends before it exits
    assert server_gone, "the fork server outlived the driver by more than 10 s"
    assert not list(out.glob("*/seed0/run.json"))  # nothing ran on to its 50th epoch


def loaded(pid: int, library: str) -> bool:
    """Whether process `pid` has mapped a file whose path contains `library`."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError:  # ended
        return False


@pytest.mark.parametrize("entry", ["python -m normlab", "normlab script"])
def test_ctrl_c_while_starting_is_one_line(tmp_path: Path, entry: str, default_ctrl_c: None):
    """Ctrl-C in the first seconds, while the command line and torch are still importing, ends
    as one line and status 130, like one later on: it used to end in a KeyboardInterrupt
    traceback from the middle of an import. Both ways in: the console script is the one users
    run, `python -m normlab` the one the other tests do."""
    script = Path(sys.executable).with_name("normlab")
    if entry == "normlab script" and not script.exists():
        pytest.skip("normlab is not installed as a script beside this Python")
    out = tmp_path / "study"
    args = ["run", "--data-dir", tmp_path / "data", "--out", out]
    cmd = normlab_cmd(*args) if entry == "python -m normlab" else [str(script), *map(str, args)]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not loaded(proc.pid, "torch/_C") and proc.poll() is None:  # torch's import has begun
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.decode() == "normlab: interrupted while starting; nothing ran\n"
    assert not out.exists()


def run_buffered(prog: str) -> subprocess.CompletedProcess:
    """`python -c prog` with its output as text, piped and buffered (PYTHONUNBUFFERED dropped),
    as `normlab ... | less` has it: what an exit that skips Python's flush would lose."""
    env = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, env=env, timeout=20
    )


@pytest.mark.parametrize(
    ("code", "status", "err"),
    [(None, 0, ""), (3, 3, ""), (True, 1, ""), ("bad", 1, "bad\n"), ([1], 1, "[1]\n")],
)
def test_leave_ends_as_sys_exit_would(code: object, status: int, err: str):
    """`leave` keeps what `sys.exit` does: other threads finish, an idle executor's worker is
    stopped (its hook is the threads' shutdown, not atexit: joining it alone hangs), atexit
    handlers run, output still in the buffers is written, the status is the same. It skips the
    interpreter's teardown, where a module-level object's `__del__` would run (after torch's
    import that teardown costs 125 MB). stdout is buffered (`run_buffered`): an `os._exit`
    without the flush would lose it all."""
    prog = (
        "import atexit, os, threading, time\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from normlab.__main__ import leave\n"
        "class Torn:\n"
        "    def __del__(self): os.write(2, b'teardown')\n"
        "torn = Torn()\n"
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(int).result()\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "print('buffered', end='')\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread', end=''))).start()\n"
        f"leave({code!r})\n"
    )
    proc = run_buffered(prog)
    assert (proc.returncode, proc.stderr) == (status, err)
    assert proc.stdout == "bufferedthreadhandler ran\n"


def test_leave_into_a_closed_pipe_exits_120_and_still_flushes_stderr():
    """A reader that went away (`normlab ... | head`): stdout's flush fails, and as in Python's
    own exit the status becomes 120 and stderr is still flushed, without a traceback."""
    prog = (
        "import os, sys\n"
        "from normlab.__main__ import leave\n"
        "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"
        "print('buffered', end=''); sys.stderr.write('partial')\n"
        "leave(3)\n"
    )
    proc = run_buffered(prog)
    assert (proc.returncode, proc.stderr) == (120, "partial")


@pytest.mark.slow
def test_pool_workers_never_take_ctrl_c():
    """The pool's workers leave Ctrl-C to the driver: a SIGINT sent to one (as a terminal sends
    it to the whole group) does not stop it. (slow: the fork server imports torch first.)"""
    worker = pool_context().Process(target=time.sleep, args=(3,))
    worker.start()
    time.sleep(1)
    os.kill(worker.pid, signal.SIGINT)
    worker.join()
    assert worker.exitcode == 0  # slept its 3 s through the interrupt


@pytest.fixture
def default_ctrl_c():
    """Python's own SIGINT handler for the test, whatever the runner had (a pytest started in
    the background of a script has SIGINT ignored). A child started meanwhile begins with
    SIGINT at its default, which its Python turns into KeyboardInterrupt: an ignored SIGINT
    would be inherited, and Python leaves it ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_held_for_the_fork_server_start_is_delivered_when_it_ends(default_ctrl_c):
    """A Ctrl-C held while the fork server starts (so that the server inherits the mask) waits
    in the kernel and reaches this thread as the window ends: ignoring it there, as the driver
    once did, dropped it, and an interrupted study trained on to its end."""
    pending_inside = False
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_held():
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread only
            pending_inside = signal.SIGINT in signal.sigpending()
        time.sleep(0.2)
    assert pending_inside


def test_ctrl_c_deferred_is_raised_when_the_block_ends(default_ctrl_c):
    """While the pool's workers start, Ctrl-C is noted and raised when the block ends, so
    `stop_pool` sees every worker; before, it could land between a worker's fork and the pool's
    record of it, and that worker outlived the driver. The handler comes back as it was."""
    reached_end = False
    with pytest.raises(KeyboardInterrupt), ctrl_c_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # an interrupt that is not deferred is raised by now
        reached_end = True
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_deferred_leaves_an_ignored_ctrl_c_ignored():
    """A study started with SIGINT ignored (in the background of a script) stays deaf to it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with ctrl_c_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_gives_identical_results(mnist_dir: Path, tmp_path: Path):
    args = ["run", "--data-dir", mnist_dir, "--variants", "bn,gn", "--epochs", "3"]
    args += ["--limit-train", "1024", "--limit-test", "256", "--device", "cpu"]
    reference = run_cli(*args, "--out", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    checkpoint = out / "bn" / "seed0" / "checkpoint.pt"
    proc = subprocess.Popen(
        normlab_cmd(*args, "--out", out),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not checkpoint.exists() and proc.poll() is None:
            time.sleep(0.005)
        # The first epoch is checkpointed: the second is under way. Kill it there.
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "bn" / "seed0" / "run.json").exists()
    assert 1 <= len(load_checkpoint(checkpoint)["metrics"]) < 3

    resumed = run_cli(*args, "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the study" in resumed.stdout
    assert "resuming from its checkpoint" in resumed.stdout

    assert tmp_leftovers(out) == []
    for variant in ("bn", "gn"):
        ref_run, run = tmp_path / "reference" / variant / "seed0", out / variant / "seed0"
        assert not (run / "checkpoint.pt").exists()
        assert comparable_metrics(run) == comparable_metrics(ref_run)
        assert len(comparable_metrics(run)) == 3
        for key, value in read_predictions(ref_run).items():
            np.testing.assert_array_equal(read_predictions(run)[key], value)
        ref_state, state = load_state_dict(ref_run), load_state_dict(run)
        assert ref_state.keys() == state.keys()
        for key, tensor in ref_state.items():
            assert torch.equal(state[key], tensor), key


def test_finished_runs_are_skipped_and_tmp_leftovers_removed(
    finished_study: list, capsys: pytest.CaptureFixture
):
    out, args = finished_study
    run = out / "bn" / "seed0"
    before = snapshot(run)
    (run / ".model.pt.tmp").write_bytes(b"half a model from a killed process")
    code, stdout, err = main_in_process(capsys, *args, "--out", out)
    assert code == 0, err
    assert "resuming the study" in stdout
    assert "already finished in this folder, skipped" in stdout
    assert tmp_leftovers(out) == []
    assert snapshot(run) == before


def test_folder_with_a_different_study_is_refused(
    finished_study: list, capsys: pytest.CaptureFixture
):
    out, args = finished_study
    before = snapshot(out)
    code, _, err = main_in_process(capsys, *args, "--epochs", "2", "--out", out)
    assert_one_line_error(code, err, "holds a study with a different configuration", "train")
    assert snapshot(out) == before


def test_fresh_only_deletes_variant_folders_inside_the_study(tmp_path: Path):
    """study.json is a user file: a variant named '../victim' must not make --fresh delete
    a folder outside the study."""
    out, victim = tmp_path / "study", tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    out.mkdir()
    config = StudyConfig(variants=tuple(parse_variants("gn")), data_dir=tmp_path)
    stored = config.to_dict()
    stored["variants"] = [{"name": "../victim"}, {"name": "gn"}]
    (out / "study.json").write_text(json.dumps({"config": stored}))
    (out / "gn").mkdir()
    prepare_folder(out, config, fresh=True)
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (out / "gn").exists()


def test_a_study_json_from_before_a_new_train_option_still_resumes(tmp_path: Path):
    """docs/results/cifar10's study.json predates `compile`: a missing option is its default."""
    out = tmp_path / "study"
    out.mkdir()
    config = StudyConfig(variants=tuple(parse_variants("gn")), data_dir=tmp_path)
    stored = config.to_dict()
    del stored["train"]["compile"]
    (out / "study.json").write_text(json.dumps({"config": stored}))
    assert prepare_folder(out, config, fresh=False) is None
    other = StudyConfig(
        variants=config.variants, data_dir=tmp_path, train=TrainOptions(compile=True)
    )
    with pytest.raises(NormlabError, match="differs in: train"):
        prepare_folder(out, other, fresh=False)


@pytest.mark.parametrize("damage", [b"{not json", b"[1, 2]", b'{"runs": ["gn/seed0"]}'])
def test_fresh_recovers_from_a_damaged_study_json(tmp_path: Path, damage: bytes):
    out = tmp_path / "study"
    for folder in (out / "gn" / "seed0", out / "keep", tmp_path / "outside"):
        folder.mkdir(parents=True)
    (out / "gn" / "seed0" / "run.json").write_text("{}")  # would be skipped as finished
    (out / "study.json").write_bytes(damage)
    (out / "summary.json").write_text("{}")
    config = StudyConfig(variants=tuple(parse_variants("gn")), data_dir=tmp_path)
    with pytest.raises(NormlabError, match="--fresh"):
        prepare_folder(out, config, fresh=False)
    note = prepare_folder(out, config, fresh=True)
    assert note is not None and "study.json was unreadable" in note
    assert not (out / "gn").exists()
    assert not (out / "study.json").exists() and not (out / "summary.json").exists()
    assert (out / "keep").is_dir() and (tmp_path / "outside").is_dir()


# --- 2. Divergence ----------------------------------------------------------------------------


@pytest.mark.slow
def test_diverging_run_is_marked_and_the_study_goes_on(mnist_dir: Path, tmp_path: Path):
    """At a peak learning rate of 100 the network without normalization overflows, while
    GroupNorm's scale invariance keeps its loss finite. The diverged run keeps the metrics of
    its good epochs and no model.pt or predictions.npz (its weights are NaN). On `mnist`:
    `mnist-h7`, the default when this was written, does not overflow there (its ReLUs die)."""
    out = tmp_path / "study"
    args = ["run", "--data-dir", mnist_dir, "--variants", "none,gn", "--lr", "100"]
    args += ["--model", "mnist"]
    result = run_cli(*args, "--epochs", "2", *SMALL, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "diverged" in result.stdout
    summary = {v["name"]: v for v in read_json(out / "summary.json")["variants"]}
    assert summary["none"]["status"] == "diverged"
    (seed,) = summary["none"]["seeds"]
    assert seed["status"] == "diverged"
    assert seed["diverged_epoch"] in (1, 2)
    diverged = out / "none" / "seed0"
    assert read_json(diverged / "run.json")["diverged_epoch"] == seed["diverged_epoch"]
    assert len(read_metrics(diverged)) == seed["diverged_epoch"] - 1
    assert not (diverged / "model.pt").exists()
    assert not (diverged / "predictions.npz").exists()
    with pytest.raises(NormlabError, match="diverged"):
        read_predictions(diverged)
    assert (out / "gn" / "seed0" / "model.pt").exists()
    assert len(read_predictions(out / "gn" / "seed0")["pred"]) == 256
    assert summary["gn"]["status"] == "finished"
    assert summary["gn"]["seeds"][0]["epochs"] == 2
    assert all(np.isfinite(r["test_loss"]) for r in read_metrics(out / "gn" / "seed0"))


# --- 3. The bad-input catalogue ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--variants", "gn,xx"], ["unknown variant 'xx'", "bn+l1"]),
        (["--variants", "gn+l3"], ["unknown variant 'gn+l3'", "not a regularizer"]),
        (["--variants", "gn", "--groups", "5"], ["groups=5 does not divide 16 channels"]),
        (["--epochs", "0"], ["--epochs must be a positive integer, got 0"]),
        (["--epochs", "-3"], ["--epochs must be a positive integer, got -3"]),
        (["--batch-size", "0"], ["--batch-size must be a positive integer, got 0"]),
        (["--batch-size", "-1"], ["--batch-size must be a positive integer, got -1"]),
        (["--epochs", "two"], ["Invalid value for '--epochs'"]),
        (["--model", "-4"], ["bad architecture token '-4'"]),
        (["--model", "0"], ["bad architecture token '0'", "width of at least 1"]),
        (["--model", "16vs"], ["bad architecture token '16vs'"]),
        (["--model", "16 M M M M M"], ["does not fit 1x28x28 images"]),
        (["--model", "16 M M M M 16", "--limit-train", "1"], ["batches of at least 2"]),
        (["--variants", "gn", "--dataset", "cifar10", "--groups", "5"], ["does not divide 32"]),
    ],
)
def test_bad_run_flags(tmp_path: Path, capsys: pytest.CaptureFixture, args: list, fragments):
    out = tmp_path / "study"
    code, _, err = main_in_process(capsys, "run", *args, "--out", out)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_unknown_norm(capsys: pytest.CaptureFixture):
    code, _, err = main_in_process(capsys, "params", "--norm", "xx")
    assert_one_line_error(code, err, "unknown norm 'xx'", "bn, gn, ln, in, none")


def test_params_takes_dataset_names_and_a_model_spec(capsys: pytest.CaptureFixture):
    code, out, err = main_in_process(capsys, "params", "--dataset", "cifar10", "--norm", "bn")
    assert code == 0, err
    assert "32x16x16" in out  # the CIFAR network's stride-2 stem on 3x32x32 input
    code, out, err = main_in_process(
        capsys, "params", "--dataset", "fashion-mnist", "--model", "8 M 4"
    )
    assert code == 0, err
    assert "8x28x28" in out and "4x14x14" in out
    code, _, err = main_in_process(capsys, "params", "--dataset", "cifar")
    assert_one_line_error(code, err, "unknown dataset 'cifar'", "cifar10")


def test_device_cuda_without_gpu(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "study"
    code, _, err = main_in_process(capsys, "run", "--device", "cuda", "--out", out)
    assert_one_line_error(code, err, "--device cuda asked for, but no CUDA GPU is visible")
    assert not out.exists()


def test_dataset_missing_while_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: offline
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    args = ["run", "--data-dir", tmp_path / "data", *SMALL, "--out", tmp_path / "study"]
    code, _, err = main_in_process(capsys, *args)
    assert_one_line_error(code, err, "MNIST not found in", "could not be downloaded")
    assert not (tmp_path / "study" / "study.json").exists()


@pytest.fixture
def mnist_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the real MNIST files, to damage."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(mnist_dir / "MNIST" / "raw" / name, raw / name)
    return raw


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("truncate", "could not be read"),
        ("garbage header", "could not be read"),
        ("labels disagree", "disagree"),
    ],
)
def test_truncated_or_corrupt_mnist(
    mnist_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture, damage: str, fragment: str
):
    images, labels = mnist_copy / "train-images-idx3-ubyte", mnist_copy / "train-labels-idx1-ubyte"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:100_000])
    elif damage == "garbage header":
        images.write_bytes(b"\xff" * 16 + images.read_bytes()[16:])
    else:  # a valid header for 100 labels: the files no longer describe the same images
        labels.write_bytes(labels.read_bytes()[:4] + (100).to_bytes(4, "big") + bytes(100))
    out = tmp_path / "study"
    args = ["run", "--data-dir", tmp_path / "data", *SMALL, "--out", out]
    code, _, err = main_in_process(capsys, *args)
    assert_one_line_error(code, err, str(mnist_copy), fragment, "delete them and download again")
    assert not (out / "study.json").exists()


def test_image_folder_without_classes(tmp_path: Path, capsys: pytest.CaptureFixture):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "README.txt").write_text("no class folders here")
    out = tmp_path / "study"
    code, _, err = main_in_process(capsys, "run", "--dataset", folder, *SMALL, "--out", out)
    line = assert_one_line_error(code, err, str(folder))
    assert "class" in line.lower()
    assert not (out / "study.json").exists()


def test_image_folder_with_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture):
    from PIL import Image

    folder = tmp_path / "images"
    for split in ("train", "test"):  # the layout issue 4 specifies: SPLIT/CLASS/*.png
        for cls in ("cat", "dog"):
            (folder / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / split / cls / f"{i}.png")
    (folder / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    out = tmp_path / "study"
    code, _, err = main_in_process(capsys, "run", "--dataset", folder, *SMALL, "--out", out)
    assert_one_line_error(code, err, "broken.png")
    assert not (out / "study.json").exists()


@pytest.mark.parametrize(
    ("text", "key"),
    [("variants: [gn, ln]\nepochz: 3\n", "epochz"), ("variants: [gn]\nepochs: two\n", "epochs")],
)
def test_sweep_yaml_with_unknown_key_or_wrong_type(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, key: str
):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(text)
    code, _, err = main_in_process(capsys, "sweep", sweep)
    assert_one_line_error(code, err, key)


def test_out_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the study folder should go")
    out = blocker / "study"
    code, _, err = main_in_process(capsys, "run", *SMALL, "--out", out)
    assert_one_line_error(code, err, f"cannot create the study folder {out}", "writable --out")
    assert blocker.read_text() == "a file where the study folder should go"


class FullDisk(io.FileIO):
    """A file on a disk that fills up halfway through the first write."""

    def write(self, data: bytes) -> int:
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def failing_open(monkeypatch: pytest.MonkeyPatch, fails, make) -> None:
    """Make normlab's atomic writer open files through `make` where `fails(path)` holds."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        return make(path) if fails(Path(path)) else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("normlab.atomic.open", fake_open, raising=False)


def test_disk_full_mid_study_loses_nothing(
    mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """The disk fills while the second run writes its second checkpoint: the first run's
    files, the second run's first checkpoint and summary.json stay whole, no temporary file is
    left, and once there is space again the same command finishes the study."""
    out = tmp_path / "study"
    # --workers 1: the failing disk is a patch on this process, which pool workers do not share.
    args = ["run", "--data-dir", mnist_dir, "--variants", "bn,ln", "--epochs", "2", *SMALL]
    args += ["--workers", "1"]
    second_checkpoint = out / "ln" / "seed0" / "checkpoint.pt"

    def fails(path: Path) -> bool:
        return path.name == ".checkpoint.pt.tmp" and second_checkpoint.exists()

    failing_open(monkeypatch, fails, lambda path: FullDisk(path, "wb"))
    code, _, err = main_in_process(capsys, *args, "--out", out)
    assert_one_line_error(code, err, f"cannot write {second_checkpoint}", "No space left on device")
    assert tmp_leftovers(out) == []
    assert read_json(out / "bn" / "seed0" / "run.json")["status"] == "finished"
    assert len(read_metrics(out / "bn" / "seed0")) == 2
    assert len(load_checkpoint(second_checkpoint)["metrics"]) == 1
    assert [v["name"] for v in read_json(out / "summary.json")["variants"]] == ["bn"]

    monkeypatch.undo()
    code, stdout, err = main_in_process(capsys, *args, "--out", out)
    assert code == 0, err
    assert "resuming from its checkpoint" in stdout
    assert len(read_metrics(out / "ln" / "seed0")) == 2


def test_folder_turned_read_only_keeps_the_study(
    finished_study: list, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    """Root ignores permission bits, so the refusal is simulated where the OS would give it."""
    out, args = finished_study
    before = snapshot(out)

    def denied(path: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    failing_open(monkeypatch, lambda path: out in path.parents, denied)
    code, _, err = main_in_process(capsys, *args, "--out", out)
    assert_one_line_error(code, err, f"cannot write {out / 'study.json'}", "Permission denied")
    assert snapshot(out) == before


def test_unreadable_checkpoint_is_one_line(
    finished_study: list, capsys: pytest.CaptureFixture, tmp_path: Path
):
    """A checkpoint that is a pickle with a payload is refused by weights_only loading, and
    the payload never runs."""
    out, args = finished_study
    run = out / "bn" / "seed0"
    (run / "run.json").unlink()
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"model": Payload(), "metrics": []}, run / "checkpoint.pt")
    code, _, err = main_in_process(capsys, *args, "--out", out)
    assert_one_line_error(code, err, f"checkpoint {run / 'checkpoint.pt'} is unreadable")
    assert not marker.exists()


def test_library_errors_with_newlines_stay_one_line(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    def boom(**_: object) -> None:
        raise NormlabError("first line\nsecond line")

    monkeypatch.setattr(cli, "app", boom)
    code, _, err = main_in_process(capsys)
    assert_one_line_error(code, err, "first line second line")


# --- 4. Untrusted files -------------------------------------------------------------------------


def unsafe_loads(source: str) -> list[str]:
    """Calls in `source` that could unpickle a user's file: torch.load without
    weights_only=True, pickle.load(s), yaml.load (not safe_load), anything with
    allow_pickle=True."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
        pickles = isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value
        if (
            (func == "torch.load" and safe is not True)
            or func in ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load")
            or pickles is True
        ):
            found.append(ast.unparse(node))
    return found


def test_source_never_unpickles_user_files():
    """A guard for the future over every module of the package."""
    offenders = {
        path.name: calls
        for path in sorted((REPO / "src" / "normlab").rglob("*.py"))
        if (calls := unsafe_loads(path.read_text()))
    }
    assert offenders == {}


def test_unsafe_load_guard_catches_each_pattern():
    assert unsafe_loads("torch.load(Path(p), map_location='cpu', weights_only=True)") == []
    assert unsafe_loads("yaml.safe_load(t); np.load(f, allow_pickle=False)") == []
    for bad in (
        "torch.load(Path(p))",
        "torch.load(p, weights_only=False)",
        "pickle.load(f)",
        "yaml.load(t, Loader=yaml.Loader)",
        "np.load(f, allow_pickle=True)",
    ):
        assert unsafe_loads(bad) == [bad], bad


def test_config_from_dict_refuses_malformed_input():
    good = StudyConfig(variants=tuple(parse_variants("gn,bn+l1"))).to_dict()
    for broken in (
        {**good, "train": {**good["train"], "epochz": 3}},
        {**good, "train": "fast"},
        {**good, "variants": "gn"},
        {**good, "variants": [{"norm": "gn", "colour": 1}]},
        {**good, "seeds": "3"},
        {**good, "train": {**good["train"], "lr": "0.1"}},
    ):
        with pytest.raises(NormlabError):
            StudyConfig.from_dict(broken)


@pytest.mark.parametrize("total_steps", range(1, 13))
def test_schedule_survives_tiny_runs(total_steps: int):
    """One epoch of a small subset is a handful of steps; OneCycleLR must not divide by zero."""
    model = Net("gn")
    opt, sched = make_optimizer(model, Variant("gn"), TrainOptions(), total_steps)
    used = []
    for _ in range(total_steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 < lr <= 0.1 for lr in used), used


def schedule(opts: TrainOptions, steps: int, key: str = "lr") -> list[float]:
    """The optimizer's `key` (lr or momentum) at each of `steps` steps under `opts`."""
    opt, sched = make_optimizer(Net("gn"), Variant("gn"), opts, steps)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0][key])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize(
    ("momentum", "start", "peak"), [(0.9, 0.95, 0.85), (0.5, 0.55, 0.45), (0, 0, 0)]
)
def test_momentum_setting_reaches_the_optimizer(momentum: float, start: float, peak: float):
    """OneCycle used to overwrite any momentum with its own 0.85-0.95 cycle (a study file's
    `momentum: 0` still trained with momentum); now it swings around the setting, and 0 is
    plain SGD. The default's cycle is OneCycleLR's own, so stored studies train as before."""
    opts = TrainOptions(momentum=momentum)
    seen = schedule(opts, 8, "momentum")
    assert seen[0] == pytest.approx(start) and min(seen) == pytest.approx(peak)
    opt, _ = make_optimizer(Net("gn"), Variant("gn"), opts, 8)
    assert opt.param_groups[0]["nesterov"] == (momentum > 0)


def test_default_momentum_cycle_is_onecycle_own():
    """Not approximately: exactly the floats OneCycleLR used before the setting reached it, so a
    stored study trains bit for bit as it did."""
    opt, _ = make_optimizer(Net("gn"), Variant("gn"), TrainOptions(), 8)
    group = opt.param_groups[0]
    assert (group["max_momentum"], group["base_momentum"]) == (0.95, 0.85)


def test_cosine_anneal_reaches_the_schedule():
    """`anneal: cos` changes the shape of the ramps and nothing else: the same start, peak
    (at the same step) and end, but about 9% of the peak where three twentieths of the steps
    are left (the default straight line: 20%)."""
    line, cos = schedule(TrainOptions(), 400), schedule(TrainOptions(anneal="cos"), 400)
    assert cos[0] == pytest.approx(line[0]) and cos[99] == pytest.approx(line[99]) == 0.1
    assert cos[25] < line[25]  # the warm-up is a half cosine too
    assert line[340] == pytest.approx(0.02, rel=0.02)
    assert cos[340] == pytest.approx(0.0093, abs=3e-4)
    assert cos[-1] == pytest.approx(line[-1]) == pytest.approx(1e-4)


@pytest.mark.parametrize("momentum", [0.01, 0.95, -0.1])
def test_momentum_that_would_swing_out_of_range_is_refused(momentum: float):
    with pytest.raises(
        NormlabError, match=r"momentum must be 0 \(plain SGD\) or a number from 0.05 to 0.94"
    ):
        TrainOptions(momentum=momentum)
