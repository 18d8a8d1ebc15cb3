import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backend.errors import ExplorerError
from backend.method.sae import TopKSAE, topk_codes
from backend.method.sae_train import SAETrainConfig, SAETrainer, fraction_of_variance_unexplained, tensor_batches, train_sae


def test_topk_codes_keep_exactly_k_positive_entries_per_row():
    pre = torch.randn(50, 40, generator=torch.Generator().manual_seed(0)) + 10  # all positive
    codes = topk_codes(pre, 7)
    assert ((codes != 0).sum(1) == 7).all()
    kept = codes.gather(1, pre.topk(7).indices)
    assert torch.equal(kept, pre.topk(7).values)


def test_topk_codes_never_keep_negative_values():
    pre = -torch.rand(8, 16)
    assert (topk_codes(pre, 4) == 0).all()


def test_encode_has_k_nonzeros_when_preactivations_are_positive():
    sae = TopKSAE(12, 30, 5)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)
    codes = sae.encode(torch.randn(20, 12))
    assert ((codes != 0).sum(1) == 5).all()


def test_decode_is_affine_in_codes():
    sae = TopKSAE(6, 10, 3)
    z = torch.zeros(1, 10)
    z[0, 4] = 2.0
    assert torch.allclose(sae.decode(z)[0], 2.0 * sae.W_dec[:, 4] + sae.b_pre)


def test_decoder_gradient_projection_removes_the_parallel_component():
    sae = TopKSAE(8, 5, 2)
    sae.W_dec.grad = torch.randn(8, 5)
    sae.remove_parallel_decoder_grad()
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(0), torch.zeros(5), atol=1e-6)


def planted_dictionary(n=20000, d=32, n_true=64, k_true=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(d, n_true, generator=g)
    D /= D.norm(dim=0)
    idx = torch.stack([torch.randperm(n_true, generator=g)[:k_true] for _ in range(n)])
    z = torch.zeros(n, n_true).scatter_(1, idx, torch.rand(n, k_true, generator=g) + 0.5)
    return z @ D.T + 0.01 * torch.randn(n, d, generator=g), D


def test_sae_recovers_a_planted_sparse_dictionary():
    x, D = planted_dictionary()
    cfg = SAETrainConfig(n_latents=128, k=4, epochs=8, lr=3e-3, warmup_steps=20, dead_after_tokens=5000)
    sae, history = train_sae(tensor_batches(x, 256), x.shape[1], cfg, x[:2000], progress=False)
    best_cosine = (D.T @ sae.W_dec.detach()).amax(1)
    assert (best_cosine > 0.9).float().mean() >= 0.9
    with torch.no_grad():
        assert fraction_of_variance_unexplained(x, sae.decode(sae.encode(x))) < 0.1
    assert history[-1]["fvu"] < history[0]["fvu"]
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(128), atol=1e-5)


def test_latents_silent_for_too_long_count_as_dead_and_get_an_aux_loss():
    x, _ = planted_dictionary(n=512, seed=1)
    sae = TopKSAE(32, 64, 2)
    trainer = SAETrainer(sae, SAETrainConfig(n_latents=64, k=2, dead_after_tokens=100, lr=1e-3))
    with torch.no_grad():
        silent = ~(sae.encode(x[:256]) > 0).any(0)
    assert trainer.step(x[:256])["dead"] == 0  # nobody has been silent for 100 rows yet
    assert torch.equal(trainer.dead_latents(), silent)
    metrics = trainer.step(x[256:])
    assert metrics["dead"] == int(silent.sum()) > 0
    assert metrics["aux"] > 0


def test_save_and_load_round_trip(tmp_path):
    sae = TopKSAE(10, 20, 4)
    sae.save(tmp_path / "sae")
    loaded = TopKSAE.load(tmp_path / "sae")
    x = torch.randn(5, 10)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert loaded.config() == sae.config()


def test_load_reports_a_mismatched_config(tmp_path):
    TopKSAE(10, 20, 4).save(tmp_path / "sae")
    (tmp_path / "sae" / "config.json").write_text('{"d_in": 11, "n_latents": 20, "k": 4}')
    with pytest.raises(ExplorerError, match="does not match"):
        TopKSAE.load(tmp_path / "sae")


def test_training_resumed_from_a_checkpoint_file_equals_uninterrupted_training(tmp_path):
    x, _ = planted_dictionary(n=2048, seed=3)
    batches = tensor_batches(x, 128)
    one_epoch = SAETrainConfig(n_latents=64, k=4, epochs=1)
    two_epochs = SAETrainConfig(n_latents=64, k=4, epochs=2)
    train_sae(batches, x.shape[1], one_epoch, x[:500], progress=False, checkpoint=tmp_path / "state.safetensors")
    resumed, _ = train_sae(batches, x.shape[1], two_epochs, x[:500], progress=False, checkpoint=tmp_path / "state.safetensors")
    straight, _ = train_sae(batches, x.shape[1], two_epochs, x[:500], progress=False)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_learning_rate_warms_up_holds_and_decays_linearly_to_zero():
    cfg = SAETrainConfig(n_latents=4096, lr_base=1e-3, warmup_steps=10, decay_share=0.2)
    peak = 1e-3 / (4096 / 16384) ** 0.5 * 2560 / 640
    assert cfg.learning_rate(640) == pytest.approx(peak)
    assert cfg.learning_rate_at(0, 640, 100) == pytest.approx(peak / 10)
    assert cfg.learning_rate_at(50, 640, 100) == pytest.approx(peak)
    assert cfg.learning_rate_at(90, 640, 100) == pytest.approx(peak * 10 / 20)  # halfway through the last 20 steps
    assert cfg.learning_rate_at(99, 640, 100) == pytest.approx(peak / 20)
    assert cfg.learning_rate_at(99, 640) == pytest.approx(peak)  # no decay without a known length
    assert SAETrainConfig(n_latents=4096, lr=5e-3, decay_share=0.0).learning_rate_at(99, 640, 100) == pytest.approx(5e-3)  # constant


def test_default_learning_rate_is_anchored_at_the_demo_width():
    assert SAETrainConfig(n_latents=16384).learning_rate(2560) == pytest.approx(2e-4)
    assert SAETrainConfig(n_latents=1024).learning_rate(2560) == 8e-4  # the demo's rate, bit for bit (its bundle is unchanged)


@given(latents=st.integers(1, 2**20), width=st.integers(1, 2**17))
def test_default_learning_rate_falls_as_one_over_sqrt_latents_and_one_over_width(latents, width):
    """Doubling the width halves the rate, and so does 4x the latents."""
    rate = SAETrainConfig(n_latents=latents).learning_rate
    assert rate(2 * width) == pytest.approx(rate(width) / 2)
    assert SAETrainConfig(n_latents=4 * latents).learning_rate(width) == pytest.approx(rate(width) / 2)
    assert SAETrainConfig(n_latents=latents, lr=3e-3).learning_rate(width) == 3e-3  # an explicit rate is kept


def test_trainer_steps_at_the_rate_for_its_sae_width():
    """Two SAEs alike but for their input width train at rates in the inverse ratio of their widths."""
    rates = {}
    for width in (32, 128):
        trainer = SAETrainer(TopKSAE(width, 64, 4), SAETrainConfig(n_latents=64, k=4, warmup_steps=1))
        rates[width] = trainer.step(torch.randn(16, width))["lr"]
    assert rates[32] == pytest.approx(4 * rates[128])
    assert rates[128] == pytest.approx(2e-4 * (16384 / 64) ** 0.5 * 2560 / 128)
