"""Where a factor's signal lies in the rows: distances, planted amplitudes, the noise the split halves remove, and the
comparison on the demo bundle, each against a computation of its own."""

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import ExplorerError
from backend.evaluation.factor_signal import FAR, compare, distance_to_object, factor_signal
from backend.evaluation.localization import localization, object_masks
from backend.method.dense_part import project_out
from backend.serving.bundle import Bundle
from backend.shapes.classify import load_classifier, rendered_batch

BUNDLE = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-bundle"


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 7), st.integers(2, 7), st.data())
def test_distance_to_object_is_the_chebyshev_distance_to_the_nearest_object_cell(h, w, data):
    cells = data.draw(st.lists(st.booleans(), min_size=h * w, max_size=h * w))
    masks = torch.tensor(cells)[None]
    object_cells = [(i // w, i % w) for i, on in enumerate(cells) if on]
    expected = [min([max(abs(i // w - r), abs(i % w - c)) for r, c in object_cells] + [FAR]) for i in range(h * w)]
    assert distance_to_object(masks, (h, w))[0].tolist() == expected


LEVELS = torch.tensor([0.0, 1.0, 3.0])  # a factor's three values move the rows by these multiples
SHARES = torch.tensor([0.5, 0.3, 0.2])  # unequal, so centring on p-weighted means differs from plain ones


def planted(images: int, noise: float, amplitude_at: list[float], seed: int = 0, dims: int = 8):
    """Images on a 6×6 grid with a 2×2 object at a random place; a factor of three values (drawn with SHARES) shifts each
    row by LEVELS[value]·`amplitude_at[d]` along axis d, d the row's distance to the object; Gaussian noise of std `noise`
    on `dims` dimensions, half of it shared by an image's positions (as an image's rows share its noise), so only halves
    of whole images are independent."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(images, 6, 6, dtype=torch.bool)
    for i, (r, c) in enumerate(torch.randint(0, 5, (images, 2), generator=gen).tolist()):
        masks[i, r:r + 2, c:c + 2] = True
    masks = masks.flatten(1)
    value = torch.multinomial(SHARES, images, replacement=True, generator=gen)
    distance = distance_to_object(masks, (6, 6))
    shift = torch.zeros(images, 36, dims)
    for d, a in enumerate(amplitude_at):
        shift[..., d] = torch.where(distance == d, a, 0.0)
    shared = torch.randn(images, 1, dims, generator=gen)
    rows = noise * (shared + torch.randn(images, 36, dims, generator=gen)) / 2**0.5 + LEVELS[value][:, None, None] * shift
    return rows, masks, [{"colour": str(v)} for v in value.tolist()], distance


def test_a_planted_factor_has_the_amplitude_and_object_ratio_worked_out_by_hand():
    amplitude_at = [3.0, 1.0, 0.5, 0.5, 0.5]
    rows, masks, readings, distance = planted(400, 1e-3, amplitude_at)
    result = factor_signal(rows, masks, (6, 6), readings, factors=("colour",))["colour"]
    levels = LEVELS[torch.tensor([int(r["colour"]) for r in readings])]
    spread = float(levels.var(correction=0)) ** 0.5  # the means lie at a·level, so they spread as a·std(level)
    assert result["amplitude_by_distance"][0] == pytest.approx(amplitude_at[0] * spread, rel=0.01)  # 4 rows from every image
    assert result["amplitude_by_distance"] == pytest.approx([a * spread for a in amplitude_at], rel=0.05)
    counts = [int((distance == d).sum()) for d in range(FAR + 1)]
    mean = sum(a * n for a, n in zip(amplitude_at, counts)) / sum(counts)
    assert result["object_ratio"] == pytest.approx(3.0 / mean, rel=0.05)
    assert result["clear"] and result["object_spread_noise"] < 0.01 * result["spread_by_distance"][0]


def test_halves_of_whole_images_take_out_the_noise_of_finite_means_and_flag_what_is_left():
    rows, masks, readings, distance = planted(40, 1.0, [0.0] * (FAR + 1), seed=1, dims=1024)
    result = factor_signal(rows, masks, (6, 6), readings, factors=("colour",))["colour"]
    value = torch.tensor([int(r["colour"]) for r in readings])[:, None].expand_as(distance)
    for d, estimate in enumerate(result["amplitude_by_distance"]):
        at, group = distance == d, rows[distance == d]
        naive = sum(float((value[at] == v).float().mean()) * float((group[value[at] == v].mean(0) - group.mean(0)).pow(2).sum())
                    for v in value.unique()) ** 0.5  # one set of means: its noise reads as signal
        assert naive > 0.5 and estimate < 0.4 * naive  # what is left is an inner product of independent noises, ~D^(-1/4)
    assert not result["clear"]  # no factor: the on-object spread is within its noise
    assert result["object_spread_noise"] > 0


def test_too_few_images_is_a_clear_error():
    rows, masks, readings, _ = planted(3, 0.1, [1.0] * (FAR + 1))
    with pytest.raises(ExplorerError, match="at least 4 images"):
        factor_signal(rows, masks, (6, 6), readings)


def test_the_demo_bundles_comparison_reads_the_activations_its_rows_and_its_latents():
    bundle, classifier = Bundle.load(BUNDLE), load_classifier()
    grid = tuple(bundle.manifest["shapes"]["grid"])
    images, factors = rendered_batch(range(8))
    thumbnails = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)
    positions = grid[0] * grid[1]
    torch.manual_seed(0)
    traj = torch.randn(8 * positions, bundle.encoding.steps, bundle.encoding.dim) * bundle.encoding.dynamics.activation_rms[:, None]
    result = compare(bundle, traj, thumbnails, classifier)
    masks = object_masks(thumbnails, grid)
    readings = classifier.predict(images)
    assert [r["colour"] for r in readings] == [f["colour"] for f in factors]  # the classifier reads rendered images right
    encoded = bundle.encoding.to_rows(traj)
    sparse_input = project_out(encoded, bundle.sae.dense_basis, bundle.sae.b_pre.detach())  # P b_pre = P center once folded
    expected = factor_signal(sparse_input.reshape(8, positions, -1), masks, grid, readings)
    activations = factor_signal((traj / bundle.encoding.dynamics.activation_rms[:, None]).reshape(8, positions, -1), masks, grid, readings)
    encoded_signal = factor_signal(encoded.reshape(8, positions, -1), masks, grid, readings)
    for name, signal in (("sparse code's input", expected), ("activations", activations), ("encoded rows", encoded_signal)):
        for factor, measured in signal.items():  # signed spreads: random rows clamp many amplitudes to 0, spreads stay apart
            assert result["signal"][name][factor]["spread_by_distance"] == pytest.approx(measured["spread_by_distance"], rel=1e-4, abs=1e-6)
        assert any(abs(x) > 1e-3 for measured in signal.values() for x in measured["spread_by_distance"])
    last = bundle.encoding.steps - 1  # each step's block alone: the last step's activations, and its residual block
    assert result["by_step"]["activations"][last]["size"]["spread_by_distance"] == pytest.approx(factor_signal(
        (traj[:, last] / bundle.encoding.dynamics.activation_rms[last]).reshape(8, positions, -1), masks, grid, readings)["size"]["spread_by_distance"], rel=1e-4, abs=1e-6)
    assert result["by_step"]["encoded rows"][last]["shape"]["spread_by_distance"] == pytest.approx(factor_signal(
        encoded.reshape(8, positions, bundle.encoding.steps, -1)[:, :, last], masks, grid, readings)["shape"]["spread_by_distance"], rel=1e-4, abs=1e-6)
    with torch.no_grad():
        codes = bundle.sae.encode(encoded).reshape(8, positions, -1)
    located = localization(codes, masks, bundle.labels, bundle.is_global)["object_factors"]
    assert result["latents"] == {factor: located[factor]["median_ratio"] for factor in located}
    assert result["object_share"] == pytest.approx(float(masks.float().mean()))
    with pytest.raises(ExplorerError, match="whole images"):
        compare(bundle, traj[:-1], thumbnails, classifier)
    bundle.encoding.variant = "per_step"  # its rows are (position, step): no map of one row per position
    with pytest.raises(ExplorerError, match="one row per position"):
        compare(bundle, traj, thumbnails, classifier)
