"""Data parallel collection and SAE training under torchrun, with 2 CPU processes on gloo."""

import os
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import backend.build as build_module
from backend.diffusion.collect import shard_names
from backend.diffusion.models import save_model
from backend.method.sae import TopKSAE
from backend.method.sae_train import SAETrainConfig, SAETrainer
from backend.serving.bundle import Bundle
from tests.ports import free_port
from tests.tiny_models import tiny_model


def _train_two_steps(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # same initial weights on both ranks, as in train_sae
    sae = TopKSAE(16, 32, 4)
    trainer = SAETrainer(sae, SAETrainConfig(n_latents=32, k=4, lr=1e-2, warmup_steps=1))
    data = torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(rank))  # different data per rank
    for x in data:
        trainer.step(x)
    save_file({"W_dec": sae.W_dec.detach(), "rows": trainer.rows_since_fired}, f"{out_dir}/rank{rank}.safetensors")
    dist.destroy_process_group()


def test_data_parallel_steps_keep_ranks_in_sync(tmp_path):
    mp.spawn(_train_two_steps, args=(free_port(), str(tmp_path)), nprocs=2)
    rank0, rank1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert torch.equal(rank0["W_dec"], rank1["W_dec"])
    assert torch.equal(rank0["rows"], rank1["rows"])
    assert not torch.equal(rank0["W_dec"], TopKSAE(16, 32, 4).W_dec)  # it did train


def test_torchrun_build_with_two_cpu_processes(tmp_path):
    save_model(tiny_model(), tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("\n".join(f"a {c} {s}" for c in ("red", "blue", "green") for s in ("circle", "star", "square")))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "backend.build", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "bundle"),
               "--prompts", str(tmp_path / "prompts.txt"), "--num-steps", "3", "--images-per-shard", "2",
               "--n-latents", "32", "--k", "4", "--epochs", "2", "--sae-batch-size", "64", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(shard_names(tmp_path / "bundle.work" / "collect")) == 5  # ranks 0 and 1 wrote 3 and 2 shards
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.n_latents == 32 and len(bundle.images) == 9
    live = int((bundle.typical_activation > 0).sum())
    assert live > build_module.ICON_CHUNK  # two chunks of icons at least: both ranks drew some
    assert torch.equal(bundle.icons.drawn, bundle.typical_activation > 0) and bundle.icons.images[bundle.icons.drawn].flatten(1).any(1).all()
    assert '"recall@10_images": 1.0' in done.stdout
