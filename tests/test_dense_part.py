"""Dense directions (backend/method/dense_part.py): the basis is the rows' principal subspace, the folded SAE codes raw
rows as the trained one codes projected rows, reconstructs the dense part exactly, and travels through a bundle."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backend.build import Build, parse_config
from backend.diffusion.collect import read_shards
from backend.errors import ExplorerError
from backend.evaluation.evaluate import variant_settings
from backend.method.dense_part import fit_dense_basis, fold, project_out
from backend.method.sae import TopKSAE
from backend.method.sae_train import SAETrainConfig, SAETrainer
from backend.serving.bundle import Bundle
from backend.serving.concepts import Concept
from backend.serving.edits import HALO_SPREAD, OBJECT_SPREAD, object_positions
from tests.test_build import config
from tests.tiny_models import tiny_model


def rows_with_spectrum(n=3000, d=48, seed=0) -> torch.Tensor:
    """Rows whose covariance has well separated top eigenvalues 400, 200, 100, 50, then 1s, about a nonzero mean."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    stds = torch.ones(d, dtype=torch.float64)
    stds[:4] = torch.tensor([20.0, 14.0, 10.0, 7.0])
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * stds @ q.T + 5).float()


def random_sae(d: int, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(d, 64, 6)
    with torch.no_grad():
        sae.b_pre.normal_()
        sae.b_enc.normal_(std=0.1)
    return sae


def test_the_basis_spans_the_top_principal_directions_of_numpy_svd():
    rows = rows_with_spectrum()
    basis, center = fit_dense_basis(rows, 4)
    x = rows.double().numpy()
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert np.allclose(center.numpy(), x.mean(0), atol=1e-4)
    assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)
    overlap = np.linalg.svd(basis.double().numpy() @ vt[:4].T, compute_uv=False)  # cosines of the principal angles
    assert overlap.min() > 0.999


def test_fitting_is_seeded_and_leaves_the_global_generator_alone():
    rows = rows_with_spectrum()
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    first, _ = fit_dense_basis(rows, 3, seed=1)
    assert torch.rand(1) == before
    second, _ = fit_dense_basis(rows, 3, seed=1)
    assert torch.equal(first, second)


@pytest.mark.parametrize("directions", [0, 48, -1])
def test_a_basis_as_wide_as_the_rows_or_empty_is_refused(directions):
    with pytest.raises(ValueError, match="dense directions"):
        fit_dense_basis(rows_with_spectrum(), directions)


@pytest.fixture
def folded_case():
    """(rows, basis, center, the SAE as trained, the same folded): a random SAE stands in for a trained one."""
    rows = rows_with_spectrum()
    basis, center = fit_dense_basis(rows, 4)
    trained = random_sae(rows.shape[1])
    return rows, basis, center, trained, fold(trained, basis, center)


def test_the_folded_sae_codes_raw_rows_as_the_trained_one_codes_projected_rows(folded_case):
    rows, basis, center, trained, folded = folded_case
    with torch.no_grad():
        expected = trained.encode(project_out(rows, basis, center))
        codes = folded.encode(rows)
        assert torch.allclose(codes, expected, atol=1e-3)
        assert torch.equal(codes > 0, expected > 0)  # the same latents fire
        assert (folded.W_enc @ basis.T).abs().max() < 1e-4 and (basis @ folded.W_dec).abs().max() < 1e-4


def test_the_dense_part_is_reconstructed_exactly_and_the_sparse_part_within_its_subspace(folded_case):
    rows, basis, center, trained, folded = folded_case
    with torch.no_grad():
        x_hat, codes = folded.reconstruct(rows)
        projector = basis.T @ basis
        sparse = trained.decode(trained.encode(project_out(rows, basis, center)))
        expected = sparse - (sparse - center) @ projector + (rows - center) @ projector  # computed apart from fold's algebra
        assert torch.allclose(x_hat, expected, atol=1e-3)
        assert torch.allclose((x_hat - rows) @ basis.T, torch.zeros(len(rows), 4), atol=1e-3)  # no error along the basis
        assert torch.allclose(folded.decode(codes) + folded.dense_part(rows), x_hat)


def test_a_folded_sae_saves_and_loads_with_its_basis(tmp_path):
    rows = rows_with_spectrum()
    folded = fold(random_sae(rows.shape[1]), *fit_dense_basis(rows, 4))
    folded.save(tmp_path)
    loaded = TopKSAE.load(tmp_path)
    assert loaded.dense_directions == 4 and json.loads((tmp_path / "config.json").read_text())["dense_directions"] == 4
    with torch.no_grad():
        assert torch.allclose(loaded.reconstruct(rows)[0], folded.reconstruct(rows)[0])


def test_an_sae_without_dense_directions_keeps_its_file_format(tmp_path):
    sae = random_sae(16)
    sae.save(tmp_path)
    assert "dense_directions" not in json.loads((tmp_path / "config.json").read_text())
    assert TopKSAE.load(tmp_path).dense_directions == 0
    assert torch.equal(sae.dense_part(torch.ones(3, 16)), torch.zeros(3, 16))


def test_a_config_asking_for_more_dense_directions_than_its_weights_hold_is_refused(tmp_path):
    random_sae(16).save(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"dense_directions": 3}))
    with pytest.raises(ExplorerError, match="corrupt or does not match"):
        TopKSAE.load(tmp_path)


def test_a_build_with_dense_directions_ships_a_folded_sae(tmp_path):
    model = tiny_model()
    summary = Build(config(tmp_path, dense_directions=3), model=model).run()
    bundle = Bundle.load(tmp_path / "bundle")
    sae = bundle.sae
    assert sae.dense_directions == 3 and bundle.manifest["sae"]["dense_directions"] == 3
    assert (sae.dense_basis.float() @ sae.W_dec).abs().max() < 1e-2  # stored in float16
    trajectories = torch.cat([shard["traj"].float() for shard in read_shards(tmp_path / "bundle.work" / "collect")])
    rows = bundle.encoding.to_rows(trajectories)
    with torch.no_grad():
        x_hat, _ = sae.reconstruct(rows)
    along = (rows - x_hat) @ sae.dense_basis.float().T
    assert along.pow(2).sum() < 1e-3 * rows.var(0).sum() * len(rows)  # the dense part carries no error
    assert 0 < summary["fvu_sae_input"] < 1

    bundle.attach_model(model)  # an edit's object positions read the whole reconstruction, the dense part with the codes
    run = bundle.generator.base("a red circle in the top", 0)
    with torch.no_grad():
        whole, _ = sae.reconstruct(bundle.encoding.to_rows(run.traj))
    concept = Concept("typed", (0,), (1.0,))
    sparse_only = sae.decode(run.codes)
    for where, spread in (("object", OBJECT_SPREAD), ("background", HALO_SPREAD)):
        inside = object_positions(whole, spread)
        resolved, found = bundle.generator._edit_positions(run, where, concept, None)
        assert resolved == where and torch.equal(found, (inside if where == "object" else ~inside).float())
    assert not torch.equal(object_positions(sparse_only), object_positions(whole))  # the dense part changes where the object is read

    latents = [0, 5, 31]  # the map's last frame codes the whole trajectory, as the folded encoder does
    frames = bundle.maps_over_time(run.traj, latents)
    assert torch.allclose(frames[:, -1].flatten(1), run.codes[:, latents].T, atol=1e-5)


def test_a_concat_build_takes_dense_directions_out_of_its_rows_too(tmp_path):
    Build(config(tmp_path, variant="concat", dense_directions=3), model=tiny_model()).run()
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.encoding.variant == "concat" and bundle.sae.dense_directions == 3
    rows = bundle.encoding.to_rows(torch.cat([shard["traj"].float() for shard in read_shards(tmp_path / "bundle.work" / "collect")]))
    with torch.no_grad():
        x_hat, _ = bundle.sae.reconstruct(rows)
    basis = fit_dense_basis(rows, 3)[0]  # the rows' own top directions, fitted again here
    assert torch.linalg.svdvals(basis @ bundle.sae.dense_basis.float().T).min() > 0.95  # spans the same subspace
    assert ((rows - x_hat) @ bundle.sae.dense_basis.float().T).pow(2).sum() < 1e-3 * rows.var(0).sum() * len(rows)


def test_the_trainer_refuses_an_sae_that_already_has_dense_directions():
    with pytest.raises(ValueError, match="trained on projected rows, then folded"):
        SAETrainer(TopKSAE(16, 32, 4, dense_directions=2), SAETrainConfig())


def test_more_dense_directions_than_the_rows_are_wide_are_refused_before_training(tmp_path):
    with pytest.raises(ExplorerError, match="--dense-directions 4000 must be below the SAE input's width"):
        Build(config(tmp_path, dense_directions=4000), model=tiny_model()).run()
    assert not (tmp_path / "bundle.work" / "train.settings.json").exists()  # a corrected rerun in the same work directory goes ahead
    Build(config(tmp_path, dense_directions=2, stages="train"), model=tiny_model()).run()
    assert Bundle.load(tmp_path / "bundle").sae.dense_directions == 2


def test_dense_directions_are_refused_for_other_variants_and_below_zero():
    base = ["--model", "m", "--out", "o"]
    for variant in ("global_local", "per_step"):
        with pytest.raises(SystemExit):
            parse_config([*base, "--variant", variant, "--dense-directions", "4"])
    assert parse_config([*base, "--variant", "concat", "--dense-directions", "4"]).dense_directions == 4
    with pytest.raises(SystemExit):
        parse_config([*base, "--dense-directions", "-1"])
    assert parse_config([*base, "--dense-directions", "4"]).dense_directions == 4


@pytest.mark.parametrize("name, settings", [("residualized", {"variant": "residualized", "dense_directions": 0}),
                                            ("global_local", {"variant": "global_local", "dense_directions": 0}),
                                            ("residualized+dense16", {"variant": "residualized", "dense_directions": 16}),
                                            ("concat+dense4", {"variant": "concat", "dense_directions": 4})])
def test_evaluation_variant_names(name, settings):
    assert variant_settings(name) == settings


@given(st.text(max_size=30))
def test_any_other_variant_name_is_refused_with_the_choices(name):
    try:
        settings = variant_settings(name)
    except ValueError as err:
        assert "choose from" in str(err)
    else:
        assert name == settings["variant"] or name == f"{settings['variant']}+dense{settings['dense_directions']}"
