import json

import pytest
import torch

from backend.errors import ExplorerError
from backend.method.dynamics import LinearDynamics
from backend.method.sae import TopKSAE
from backend.serving.bundle import Bundle
from tests.test_dynamics import linear_trajectories


def make_bundle(root, variant="residualized"):
    traj, _, _ = linear_trajectories(n=300, steps=3, dim=4, noise=0.3, seed=2)
    dynamics = LinearDynamics.fit(traj.float(), ridge=1e-3)
    d_in = 4 if variant == "per_step" else 12
    return Bundle.save(root, sae=TopKSAE(d_in, 16, 3), dynamics=dynamics, variant=variant, site="up_ft1",
                       model={"source": "tiny"}, schedule={"num_steps": 3, "recorded_steps": [0, 1, 2]}, grid=(4, 4))


def test_save_load_round_trip(tmp_path):
    saved = make_bundle(tmp_path)
    loaded = Bundle.load(tmp_path)
    assert loaded.manifest["site"] == "up_ft1" and loaded.manifest["shapes"] == {"steps": 3, "dim": 4, "grid": [4, 4]}
    assert set(loaded.manifest["files"]) == {"sae/sae.safetensors", "sae/config.json", "dynamics.safetensors"}
    assert "torch" in loaded.manifest["versions"]
    assert torch.equal(loaded.sae.W_dec, saved.sae.W_dec)
    assert torch.allclose(loaded.feature_trajectory(5), saved.feature_trajectory(5))
    assert loaded.feature_trajectory(5).shape == (3, 4)


def test_feature_trajectory_follows_the_dynamics(tmp_path):
    bundle = make_bundle(tmp_path)
    dyn, column = bundle.encoding.dynamics, bundle.sae.W_dec[:, 2].detach().reshape(3, 4)
    phi = bundle.feature_trajectory(2)
    delta = column * dyn.scales[:, None]
    assert torch.allclose(phi[0], delta[0], atol=1e-6)
    assert torch.allclose(phi[1], delta[1] + dyn.A[0] @ phi[0], atol=1e-5)


def test_a_planted_mid_schedule_latent_peaks_mid_schedule_in_the_bundle(tmp_path):
    traj, _, _ = linear_trajectories(n=300, steps=3, dim=4, noise=0.3, seed=2)
    traj = traj * torch.tensor([10.0, 3.0, 1.0], dtype=traj.dtype)[:, None]  # activations shrink over the schedule
    dynamics = LinearDynamics.fit(traj.float(), ridge=1e-3)
    sae = TopKSAE(12, 4, 2)
    with torch.no_grad():
        sae.W_dec[:, 1] = torch.tensor([0.4, 0, 0, 0, 0.8, 0, 0, 0, 0.3, 0, 0, 0])  # concat blocks: mostly step 1
    bundle = Bundle.save(tmp_path, sae=sae, dynamics=dynamics, variant="concat", site="up_ft1", model={"source": "tiny"},
                         schedule={"num_steps": 3, "recorded_steps": [0, 1, 2]}, grid=(1, 1))
    raw = bundle.feature_trajectory(1).norm(dim=1)
    assert int(raw.argmax()) == 0  # raw norms would call it an early latent
    scale = traj.float().pow(2).sum(2).mean(0).sqrt()  # √E‖a_t‖², computed here from the data
    assert torch.allclose(bundle.temporal_profiles.trajectory[1], raw / scale, rtol=1e-4)
    assert int(bundle.temporal_profiles.peak_index[1]) == 1
    assert torch.allclose(bundle.trajectory_vectors[1], (bundle.feature_trajectory(1) / scale[:, None]).flatten(), rtol=1e-4)


def test_a_flipped_byte_is_reported_with_the_file_name(tmp_path):
    make_bundle(tmp_path)
    path = tmp_path / "sae" / "sae.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExplorerError, match=r"sae/sae\.safetensors .*corrupt"):
        Bundle.load(tmp_path)


def test_a_missing_file_is_reported_with_the_file_name(tmp_path):
    make_bundle(tmp_path)
    (tmp_path / "dynamics.safetensors").unlink()
    with pytest.raises(ExplorerError, match="dynamics.safetensors is missing"):
        Bundle.load(tmp_path)


def test_a_manifest_path_outside_the_bundle_is_refused(tmp_path):
    make_bundle(tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "bundle.json").read_text())
    (tmp_path / "secret.txt").write_text("x")
    manifest["files"]["../secret.txt"] = "0" * 64
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ExplorerError, match="outside the bundle"):
        Bundle.load(tmp_path / "b")


def test_truncated_manifest_and_missing_bundle_are_clear_errors(tmp_path):
    make_bundle(tmp_path / "b")
    (tmp_path / "b" / "bundle.json").write_text('{"format_version": 1, "site"')
    with pytest.raises(ExplorerError, match="not valid JSON"):
        Bundle.load(tmp_path / "b")
    with pytest.raises(ExplorerError, match="no bundle.json"):
        Bundle.load(tmp_path)


def test_mismatched_sae_width_is_refused_at_save(tmp_path):
    traj, _, _ = linear_trajectories(n=100, steps=3, dim=4, seed=3)
    with pytest.raises(ExplorerError, match="does not match"):
        Bundle.save(tmp_path, sae=TopKSAE(5, 8, 2), dynamics=LinearDynamics.fit(traj.float()), variant="residualized",
                    site="up_ft1", model={}, schedule={}, grid=(2, 2))


def test_uncached_hub_repo_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "cache"))
    with pytest.raises(ExplorerError, match="offline mode"):
        Bundle.load("someone/some-bundle")


def test_hub_repo_id_loads_from_its_snapshot(tmp_path, monkeypatch):
    make_bundle(tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, local_files_only):
        calls.append((repo_id, local_files_only))
        return str(tmp_path / "snapshot")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    assert Bundle.load("someone/some-bundle").manifest["site"] == "up_ft1"
    assert calls == [("someone/some-bundle", True)]


@pytest.mark.parametrize("bad", [-1, 16, 2.5, "3", None])
def test_unknown_latent_ids_are_rejected(tmp_path, bad):
    bundle = make_bundle(tmp_path)
    with pytest.raises(ExplorerError, match="Latent"):
        bundle.feature_trajectory(bad)


def test_atomic_writes_leave_no_temporary_files_and_usual_permissions(tmp_path):
    import os

    import torch

    from backend.io import write_json, write_safetensors

    write_json(tmp_path / "a.json", {"x": 1})
    write_safetensors(tmp_path / "b.safetensors", {"x": torch.zeros(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.safetensors"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.json", "b.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask, name
