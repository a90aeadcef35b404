"""Multi-process training with torchrun's conventions: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT from the environment, gloo on the CPU."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from defocus_cli.errors import InputError
from defocus_cli.models.b import BlurNet, BlurNetConfig
from defocus_cli.pipelines.train import Dist, dist_from_env, load_checkpoint
from defocus_cli.pipelines.train_data import write_toy_dataset

# one rank, as torchrun starts it: the job's shape is in the environment only
RANK_SCRIPT = """
import json, sys
from defocus_cli.pipelines.train import TrainConfig, launch
result = launch(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], gpus=0, threads=1)
print(json.dumps({"step": result.step}))
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), n_train=8, n_val=1, size=48, seed=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_place_in_the_job_comes_from_torchrun_variables():
    assert dist_from_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert dist_from_env(env) == Dist(rank=3, world=4, local_rank=1)
    assert dist_from_env({"RANK": "0", "WORLD_SIZE": "1"}) == Dist()  # one process needs no rendezvous
    with pytest.raises(InputError, match="MASTER_ADDR, MASTER_PORT not"):
        dist_from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(InputError, match="RANK=4 must be in 0..WORLD_SIZE-1=3"):
        dist_from_env({**env, "RANK": "4"})
    with pytest.raises(InputError, match="must be integers"):
        dist_from_env({**env, "WORLD_SIZE": "two"})


def test_two_ranks_started_like_torchrun_train_identical_replicas(toy, tmp_path):
    run = tmp_path / "run"
    config = {"data": str(toy), "nets": "B", "width": 0.25, "crop": 32, "batch": 2, "steps": 3,
              "log_every": 1, "ckpt_every": 2, "val_max": 1}
    port = _free_port()
    procs = []
    try:
        for rank in (0, 1):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                   "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, json.dumps(config), str(run)],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == {"step": 3}
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    ckpt = load_checkpoint(run)
    assert ckpt["step"] == 3
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "kind" not in r] == [1, 2, 3]
    assert records[0]["samples_per_s"] == pytest.approx(records[0]["steps_per_s"] * 2 * 2)
    # each rank's weight checksum, gathered across the two processes: equal, and equal to the
    # checkpoint's (rank 0 wrote it)
    replicas = json.loads((run / "replicas.json").read_text())
    assert replicas["world"] == 2 and replicas["identical"]
    rank0, rank1 = replicas["checksums"]
    assert rank0 == rank1
    b = BlurNet(BlurNetConfig(width=0.25))
    b.load_state_dict(ckpt["B"])
    expected = sum(float(p.detach().double().sum() + p.detach().double().abs().sum()) for p in b.parameters())
    assert rank0 == pytest.approx(expected, rel=1e-9)
    # and the weights did train from their seeded start
    torch.manual_seed(0)
    start = BlurNet(BlurNetConfig(width=0.25))
    assert not torch.equal(start.head.weight, b.head.weight)
