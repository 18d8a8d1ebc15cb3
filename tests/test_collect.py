import pytest
import torch

from backend.diffusion.collect import CollectConfig, collect_trajectories, evenly_spaced_steps, read_shards, shard_names
from backend.errors import ExplorerError
from tests.tiny_models import tiny_model

PROMPTS = ["a red circle", "a blue star", "a green square", "a red star", "a blue circle"]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def config(**overrides):
    values = dict(site="up_ft1", num_steps=4, recorded_steps=(0, 1, 3), guidance_scale=2.0, images_per_shard=2, batch_size=2)
    return CollectConfig(**(values | overrides))


def test_evenly_spaced_steps_cover_both_ends():
    assert evenly_spaced_steps(25, 10) == (0, 3, 5, 8, 11, 13, 16, 19, 21, 24)
    assert evenly_spaced_steps(4, 4) == (0, 1, 2, 3)


def test_shards_hold_every_position_of_every_image(model, tmp_path):
    paths = collect_trajectories(model, PROMPTS, tmp_path, config(), progress=False)
    assert len(paths) == 3
    shards = list(read_shards(tmp_path))
    image_ids = torch.cat([s["image_id"] for s in shards])
    assert torch.equal(image_ids.unique(), torch.arange(5))
    assert all(s["traj"].shape[1:] == (3, 16) and s["traj"].dtype == torch.float16 for s in shards)
    assert len(image_ids) == 5 * 64


def test_subsampling_keeps_the_same_positions_on_a_rerun(model, tmp_path):
    first = collect_trajectories(model, PROMPTS[:2], tmp_path / "a", config(positions_per_image=5), progress=False)
    collect_trajectories(model, PROMPTS[:2], tmp_path / "b", config(positions_per_image=5), progress=False)
    a, b = next(read_shards(tmp_path / "a")), next(read_shards(tmp_path / "b"))
    assert len(first) == 1 and a["traj"].shape[0] == 10
    assert torch.equal(a["position"], b["position"]) and torch.equal(a["traj"], b["traj"])


def test_collection_resumes_without_redoing_finished_shards(model, tmp_path):
    collect_trajectories(model, PROMPTS, tmp_path, config(), progress=False)
    first_shard = tmp_path / "shard-00000.safetensors"
    stamp = first_shard.stat().st_mtime_ns
    (tmp_path / "shard-00002.json").unlink()  # as if killed before the last shard was finished
    assert shard_names(tmp_path) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    collect_trajectories(model, PROMPTS, tmp_path, config(), progress=False)
    assert first_shard.stat().st_mtime_ns == stamp
    assert "shard-00002.safetensors" in shard_names(tmp_path)


def test_ranks_split_the_shards_and_together_equal_one_process(model, tmp_path):
    for rank in (0, 1):
        collect_trajectories(model, PROMPTS, tmp_path / "ranks", config(), progress=False, rank=rank, world_size=2)
        if rank == 0:
            assert shard_names(tmp_path / "ranks") == ["shard-00000.safetensors", "shard-00002.safetensors"]
    collect_trajectories(model, PROMPTS, tmp_path / "single", config(), progress=False)
    for split, single in zip(read_shards(tmp_path / "ranks"), read_shards(tmp_path / "single")):
        assert torch.equal(split["traj"], single["traj"])


def test_a_directory_with_another_config_is_refused(model, tmp_path):
    collect_trajectories(model, PROMPTS[:2], tmp_path, config(), progress=False)
    with pytest.raises(ExplorerError, match="another config"):
        collect_trajectories(model, PROMPTS[:2], tmp_path, config(site="up_ft2"), progress=False)


def test_a_corrupt_shard_is_detected(model, tmp_path):
    collect_trajectories(model, PROMPTS[:2], tmp_path, config(), progress=False)
    shard = tmp_path / "shard-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ExplorerError, match="corrupt"):
        list(read_shards(tmp_path))
