"""DDP under torchrun: 2 CPU processes (gloo) pretrain a few steps; gradients and parameters are
the same on both ranks while their batches (and so their local losses) differ."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synthetic_psg import synthetic_store

WORKER = '''
import json, sys
import torch
import torch.distributed as dist
from offline.config import ModelSection
from offline.finetune import FinetuneConfig, finetune
from offline.data import SequenceDataConfig
from offline.pretrain.run import PretrainConfig, pretrain
from offline.train_loop import LoopConfig

store, out = sys.argv[1], sys.argv[2]
loop = LoopConfig(steps=3, batch_size=4, threads=1, progress=False, device="cpu")


def run(kind):
    records, holder = [], {}

    def hook(step, obj, loss):
        holder["obj"] = obj
        grads = [p.grad.detach().flatten() for p in obj.parameters() if p.grad is not None]
        records.append({"step": step, "loss": float(loss),
                        "grad": torch.cat(grads).double().tolist()[:4000:7]})

    if kind == "pretrain":
        cfg = PretrainConfig(method="neuronet", model=ModelSection("tiny"), loop=loop)
        pretrain(cfg, store, f"{out}/{kind}", hooks=[hook])
    else:
        cfg = FinetuneConfig(init=f"{out}/pretrain/model.safetensors", loop=loop,
                             data=SequenceDataConfig(min_len=3, max_len=6))
        finetune(cfg, store, f"{out}/{kind}", hooks=[hook])
    params = torch.cat([p.detach().flatten() for p in holder["obj"].parameters()])
    return {"records": records, "params": params.double().tolist()[::11]}


result = {"pretrain": run("pretrain"), "finetune": run("finetune")}
result["world"] = dist.get_world_size()
with open(f"{out}/worker{dist.get_rank()}.json", "w") as fh:
    json.dump(result, fh)
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_store(tmp_path_factory.mktemp("store"), n_recordings=3, n_epochs=12)


def test_two_process_torchrun_keeps_gradients_and_parameters_in_sync(
    store: Path, tmp_path: Path
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        str(script), str(store), str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0, w1 = (json.loads((out / f"worker{r}.json").read_text()) for r in (0, 1))
    assert w0["world"] == w1["world"] == 2
    for kind in ("pretrain", "finetune"):
        a, b = w0[kind], w1[kind]
        assert len(a["records"]) == len(b["records"]) == 3
        for r0, r1 in zip(a["records"], b["records"], strict=True):
            # Different batches on each rank ...
            assert r0["loss"] != r1["loss"], kind
            # ... but after backward both hold the all-reduced average gradient.
            g0, g1 = torch.tensor(r0["grad"]), torch.tensor(r1["grad"])
            assert g0.abs().sum() > 0
            assert torch.allclose(g0, g1, rtol=1e-5, atol=1e-8), kind
        p0, p1 = torch.tensor(a["params"]), torch.tensor(b["params"])
        assert torch.allclose(p0, p1, rtol=1e-6, atol=1e-8), kind
        assert (out / kind / "model.safetensors").exists()
