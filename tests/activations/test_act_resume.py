"""Crash safety and data parallelism with real processes: kill -9 anywhere, then resume; torchrun with gloo."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from act_helpers import one_thread, store_files, tiny_model, worker_config

from g2interp.activations import ActivationStore, capture
from g2interp.activations.manifest import Manifest, journal_bytes
from tests.tiny import free_port

WORKER = Path(__file__).resolve().parent / "capture_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process capture every other run must reproduce file for file."""
    out = tmp_path_factory.mktemp("reference") / "s"
    with one_thread():
        result = capture(tiny_model(), worker_config(out))
    assert result.manifest.complete and result.shards_written == 24
    return store_files(out)


def test_kill_9_at_random_points_then_resume(tmp_path, reference):
    out = tmp_path / "s"
    rng = random.Random(1234)
    kills, finished, progress = 0, False, []
    while kills < 5:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--out", str(out), "--delay", "0.02"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))  # the whole capture takes about 1.5 s after READY
        if proc.poll() is not None:
            finished = True
            proc.communicate()
            break
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        kills += 1
        if (out / "manifest.json").exists():  # what a kill leaves is a valid store, part done
            partial = ActivationStore(out)
            assert partial.verify() == []
            progress.append(len(partial.shards))
    assert kills == 5 and not finished, "the capture finished before 5 kills landed"
    print("shards durable after each kill:", progress)
    with one_thread():  # the last restart runs here, with the same settings
        done = capture(tiny_model(), worker_config(out))
    assert done.manifest.complete and done.shards_written == 24 - (progress[-1] if progress else 0)
    assert store_files(out) == reference  # every shard, the contexts and the manifest, byte for byte
    assert ActivationStore(out).verify() == []


def test_two_gloo_processes_equal_one(tmp_path, reference):
    out = tmp_path / "s"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        f"--master_port={free_port()}",
        "--master_addr=127.0.0.1",
        str(WORKER),
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    shards = re.findall(r"DONE shards=(\d+) complete=(\w+)", run.stdout)  # ranks share one pipe
    assert shards == [("12", "True"), ("12", "True")]  # each rank its own half
    assert store_files(out) == reference  # one manifest, the journals merged and removed


def test_rank_journals_of_a_killed_distributed_run_are_merged(tmp_path, reference):
    """A torchrun killed mid-way leaves per-rank journals; readers count them and any later run merges them."""
    out = tmp_path / "s"
    out.mkdir()
    for rel, data in reference.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    manifest = Manifest.read(out / "manifest.json")
    # rank 0 recorded shards 0-9 in the manifest, rank 1 shards 10, 12, ..., 18 in its journal; the odd
    # shards 11-19 were written but never recorded, shards 20-23 never written
    keep, rank1 = manifest.shards[:10], manifest.shards[10:20:2]
    (out / "manifest.json").write_bytes(replace(manifest, shards=()).with_shards(keep).to_bytes())
    (out / "manifest.rank1.json").write_bytes(journal_bytes(rank1))
    for record in manifest.shards[20:]:
        for file in record.files.values():
            (out / file.path).unlink()
    store = ActivationStore(out)
    assert len(store.shards) == 15 and not store.manifest.complete
    with one_thread():
        result = capture(tiny_model(), worker_config(out))
    assert result.shards_written == 9 and not list(out.glob("manifest.rank*"))
    assert store_files(out) == reference
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
