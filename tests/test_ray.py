"""A real Ray cluster runs a 2-run sweep, and its results equal a local run's.

Ray binds to the machine's outside address and probes an outside resolver for it, so the
cluster and the driver run in a network namespace of the test's own that holds only loopback
(`unshare -n`, as root): every connection stays on 127.0.0.1. `ray stop` runs on any exit of
the shell (a trap), and the whole thing has a timeout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.store.results import load_state_dict, read_json, read_metrics, read_predictions

pytest.importorskip("ray")

SWEEP = """\
dataset: mnist
epochs: 2
seeds: 1
batch_size: 32
lr: 0.05
variants: [bn, gn]
limit_train: 256
limit_test: 200
precision: fp32
device: cpu
"""
TIMEOUT = 420


def netns_available() -> bool:
    """Root with `unshare -n` and `ip`: what the isolated cluster needs."""
    try:
        probe = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def normlab_cmd(study: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "normlab", "sweep", str(study),
        "--data-dir", str(data_dir), "--out", str(out), *extra,
    ]  # fmt: skip


def test_ray_cluster_sweep_equals_local(tmp_path: Path, mnist_dir: Path) -> None:
    if not netns_available():
        if os.environ.get("CI"):
            pytest.fail("CI must run the Ray test: it needs root for 'unshare -n'")
        pytest.skip("needs root and 'unshare -n' to isolate the Ray cluster on loopback")
    study = tmp_path / "tiny.yaml"
    study.write_text(SWEEP)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)

    local = tmp_path / "local"
    subprocess.run(
        normlab_cmd(study, mnist_dir, local), env=env, check=True, timeout=TIMEOUT,
        capture_output=True,
    )  # fmt: skip

    ray = shlex.quote(str(Path(sys.executable).parent / "ray"))
    port = 6390
    # Ray's socket paths must stay under 108 characters: pytest's tmp_path is too deep.
    temp = Path(tempfile.mkdtemp(prefix="nlray", dir="/tmp"))
    driver = shlex.join(
        normlab_cmd(study, mnist_dir, tmp_path / "ray", "--ray-address", f"127.0.0.1:{port}")
    )
    script = f"""
set -eu
ip link set lo up
trap '{ray} stop --force >/dev/null 2>&1' EXIT
{ray} start --head --node-ip-address=127.0.0.1 --port={port} --num-cpus=2 \\
    --include-dashboard=false --disable-usage-stats --temp-dir={shlex.quote(str(temp))}
timeout {TIMEOUT - 60} {driver}
"""
    proc = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the trap still runs `ray stop`
        output, _ = proc.communicate(timeout=60)
        pytest.fail(f"Ray sweep timed out:\n{output[-3000:]}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, output[-3000:]

    runs = read_json(local / "study.json")["runs"]
    assert runs == read_json(tmp_path / "ray" / "study.json")["runs"]
    assert len(runs) == 2
    for path in runs:
        a, b = local / path, tmp_path / "ray" / path
        drop = ("seconds",)
        rows_a = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(a)]
        rows_b = [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(b)]
        assert rows_a == rows_b and len(rows_a) == 2
        pa, pb = read_predictions(a), read_predictions(b)
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k])
        sa, sb = load_state_dict(a), load_state_dict(b)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert read_json(a / "run.json")["config"] == read_json(b / "run.json")["config"]
