"""Concepts and concept edits: specs, where an edit lands, and that an edit is the steering it claims to be."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.diffusion.hooks import TrajectoryRecorder
from backend.diffusion.sampler import sample
from backend.diffusion.steering import Steer, SteeringHook, steering_deltas
from backend.errors import ExplorerError
from backend.serving import generation
from backend.serving.bundle import Bundle
from backend.serving.concepts import Concept, concept, rivals_of
from backend.serving.edits import HALO_SPREAD, LADDER, add_amounts, edit_deltas, object_positions, reads_target, swap_amounts

LABELS = ([{"factor": "colour", "value": "red", "purity": 1.0, "enrichment": 0.5}] * 2
          + [{"factor": "colour", "value": "red", "purity": 0.5, "enrichment": 0.5}]
          + [{"factor": "colour", "value": "blue", "purity": 0.8, "enrichment": 0.5}] * 3
          + [{"factor": "background", "value": "gray", "purity": 0.9, "enrichment": 0.4}] * 2
          + [{}] * 24)  # 32 latents, like the tiny bundle


@dataclass
class FoundRow:  # what Bundle.contrast returns, as far as a concept reads it
    latent: int
    difference: float


@pytest.fixture(scope="module")
def labelled(tiny_bundle):
    """The tiny bundle reopened with planted labels: latents 0-2 are 'colour=red', 3-5 'colour=blue', 6-7 'background=gray';
    latent 20 is dead."""
    bundle = Bundle.load(tiny_bundle.root)
    bundle.__dict__["labels"] = LABELS
    bundle.attach_model(tiny_bundle.generator.model)
    bundle.atlas["typical"][:8] = bundle.atlas["typical"][:8].clamp_min(0.5)  # every planted latent has a typical activation
    bundle.atlas["typical"][20] = 0.0  # and latent 20 never fired
    return bundle


def test_a_label_concept_is_its_latents_weighted_by_specificity():
    red = concept("colour = red", LABELS, 32)
    assert red.latents == (0, 1, 2) and red.factor == "colour" and red.value == "red"
    assert red.weights == pytest.approx((0.4, 0.4, 0.2))  # purity × enrichment 0.5, 0.5, 0.25, normalized
    assert red.belongs_on_object and concept("background=gray", LABELS, 32).belongs_on_object is False


def test_typed_ids_weights_and_find_results_make_concepts():
    assert concept("4, 9 9", LABELS, 32).latents == (9, 4)  # a repeated id adds up
    assert concept([3, 7], LABELS, 32).weights == (0.5, 0.5)
    assert concept({2: 3.0, 5: 1.0}, LABELS, 32).weights == (0.75, 0.25)
    found = concept([FoundRow(11, 2.0), FoundRow(12, 6.0), FoundRow(13, -1.0)], LABELS, 32)
    assert found.latents == (12, 11) and found.weights == (0.75, 0.25) and found.belongs_on_object is None


@pytest.mark.parametrize("spec, message", [
    ("texture=rough", "factor 'texture'"), ("colour=pink", "values of colour: blue, red"), ("32", "does not exist"),
    ("", "empty"), ("red", "Cannot read"), ([], "no latent"), ({1: 0.0}, "no latent"), ({1: float("nan")}, "weight"),
    ([1.5], "not an integer"), (3.0, "got float"), ([FoundRow(1, -2.0)], "no latent"),
])
def test_bad_concept_specs_are_refused_with_a_clear_message(spec, message):
    with pytest.raises(ExplorerError, match=message):
        concept(spec, LABELS, 32)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(st.integers(-5, 40), max_size=6),
                 st.dictionaries(st.integers(-5, 40), st.floats(allow_nan=True, allow_infinity=True), max_size=4)))
def test_any_spec_is_a_valid_concept_or_an_explorer_error(spec):
    try:
        made = concept(spec, LABELS, 32)
    except ExplorerError:
        return
    assert made.latents and all(0 <= j < 32 for j in made.latents)
    assert abs(sum(made.weights) - 1) < 1e-9 and min(made.weights) >= 0


def test_rivals_are_the_other_values_of_the_factor_and_the_source():
    red, blue, gray = (concept(s, LABELS, 32) for s in ("colour=red", "colour=blue", "background=gray"))
    assert rivals_of(red, None, LABELS) == [blue]
    assert rivals_of(red, blue, LABELS) == [blue]  # the source is the factor's other value: counted once
    assert rivals_of(concept("9", LABELS, 32), gray, LABELS) == [gray]


def test_object_positions_find_a_planted_object():
    decoded = torch.randn(64, 10) * 0.05 + torch.ones(10)  # a background of alike positions
    planted = torch.tensor([18, 19, 20, 26, 27, 28, 34, 35, 36])
    decoded[planted] += torch.linspace(-3, 3, 10)  # an object whose rows stand out
    for spread in (1.0, 1.5):
        assert object_positions(decoded, spread).nonzero().flatten().tolist() == planted.tolist()


def test_add_amounts_are_the_steering_deltas_of_each_latent_at_its_share_of_the_strength():
    torch.manual_seed(0)
    phi, typical = torch.randn(32, 3, 5), torch.rand(32) + 0.1
    red = concept("colour=red", LABELS, 32)
    where = (torch.rand(16) > 0.5).float()
    latents, amounts = add_amounts(red, typical, 6.0, where)
    expected = steering_deltas([Steer(j, 6.0 * w) for j, w in zip(red.latents, red.weights)], phi, typical,
                               torch.zeros(16, 32), where)
    assert torch.allclose(edit_deltas(latents, amounts, phi), expected, atol=1e-5)


def test_a_swap_removes_the_source_where_it_fired_and_adds_the_target_in_proportion():
    torch.manual_seed(1)
    phi, typical = torch.randn(32, 3, 5), torch.rand(32) + 0.1
    codes = torch.zeros(16, 32)
    codes[4:8, 3] = 2.0  # blue fired on positions 4-7
    codes[6, 4] = 1.0
    red, blue = concept("colour=red", LABELS, 32), concept("colour=blue", LABELS, 32)
    where = torch.ones(16)
    where[7] = 0  # outside the edited positions nothing changes
    latents, amounts = swap_amounts(codes, blue, red, typical, 2.0, where)
    deltas = edit_deltas(latents, amounts, phi)
    removed = steering_deltas([Steer(3, 0.0, "scale"), Steer(4, 0.0, "scale")], phi, typical, codes, where)
    mass = (codes[:, 3] / typical[3] + codes[:, 4] / typical[4]) * where  # blue's code mass, in typical activations
    added = sum(2.0 * w * typical[j] * mass[:, None, None] * phi[j][None] for j, w in zip(red.latents, red.weights))  # [P, T, C]
    assert torch.allclose(deltas, removed + added.permute(1, 0, 2), atol=1e-5)
    assert deltas[:, [0, 1, 2, 3, 7]].abs().max() == 0  # where blue never fired, or outside `where`


def test_reads_target_compares_mean_scores_on_the_edited_positions():
    typical = torch.ones(32)
    red, blue = concept("colour=red", LABELS, 32), concept("colour=blue", LABELS, 32)
    base = torch.zeros(16, 32)
    base[:, 3:6] = 2.0  # the base image was blue everywhere
    codes = torch.zeros(16, 32)
    codes[:8, 3:6] = 1.0  # the edited run: blue on the first half
    codes[8:, 0:3] = 3.0  # red on the second half
    second, first = (torch.arange(16) >= 8).float(), (torch.arange(16) < 8).float()
    assert reads_target(codes, base, red, [blue], second, typical)
    assert not reads_target(codes, base, red, [blue], first, typical)
    assert not reads_target(codes * 0.3, base, red, [blue], second, typical)  # ahead of blue, but under half of the base's blue
    assert reads_target(codes, base, red, [], second, typical) and not reads_target(codes, base, red, [], first, typical)
    assert not reads_target(codes * 0.1, base, red, [], second, typical)  # no rival: under half a typical firing


def test_an_edit_of_typed_latents_at_a_given_strength_is_exactly_the_steering_it_claims(labelled):
    prompt, seed = "a red circle", 3
    edit = labelled.edit(prompt, seed, {9: 3.0, 12: 1.0}, strength=4.0, where="all")
    steered = labelled.generate(prompt, seed, [Steer(9, 3.0), Steer(12, 1.0)])
    assert torch.allclose(edit.steered_images, steered.steered_images, atol=1e-5)  # the same deltas, summed in another order
    assert edit.edit.strength == 4.0 and not edit.edit.automatic and edit.edit.removed is None
    assert edit.edit.positions.sum() == 64


def test_a_label_edit_swaps_the_other_values_of_its_factor_for_the_target(labelled):
    run = labelled.generator.base("a green star", 2)
    edit = labelled.edit("a green star", 2, "colour=red", strength=2.0, where="all")
    assert edit.edit.removed.latents == (3, 4, 5)  # every other colour's latents (blue), whatever the base shows
    typical, phi = labelled.typical_activation, labelled.feature_trajectories
    mass = sum(run.codes[:, j] / typical[j] for j in (3, 4, 5))  # [P] in typical activations
    red = labelled.concept("colour=red")
    deltas = steering_deltas([Steer(j, 0.0, "scale") for j in (3, 4, 5)], phi, typical, run.codes, torch.ones(64))
    deltas += steering_deltas([Steer(j, 2.0 * w) for j, w in zip(red.latents, red.weights)], phi, typical, run.codes, mass)
    expected = labelled.generator._steered(run, deltas, (0, labelled.generator.num_steps - 1))
    assert torch.allclose(edit.steered_images, expected.steered_images, atol=1e-5)
    assert edit.edit.positions.flatten().tolist() == (mass > 0).float().tolist()


def test_a_to_b_takes_away_the_source_and_the_other_values_where_the_source_fired(labelled):
    run = labelled.generator.base("a green star", 2)
    firing = run.codes.sum(0).argsort(descending=True)[:2].tolist()  # two latents that fired
    source = labelled.concept(firing)
    edit = labelled.edit("a green star", 2, "colour=red", source=source, strength=2.0, where="all")
    typical, phi = labelled.typical_activation, labelled.feature_trajectories
    removed = list(dict.fromkeys(firing + [3, 4, 5]))  # the source, and every other colour's latents (blue)
    assert set(edit.edit.removed.latents) == set(removed)
    where = (sum(run.codes[:, j] for j in firing) > 0).float()  # where the source fired
    mass = sum(run.codes[:, j] / typical[j] for j in removed) * where  # [P] in typical activations
    red = labelled.concept("colour=red")
    deltas = steering_deltas([Steer(j, 0.0, "scale") for j in removed], phi, typical, run.codes, where)
    deltas += steering_deltas([Steer(j, 2.0 * w) for j, w in zip(red.latents, red.weights)], phi, typical, run.codes, mass)
    expected = labelled.generator._steered(run, deltas, (0, labelled.generator.num_steps - 1))
    assert torch.allclose(edit.steered_images, expected.steered_images, atol=1e-5)
    assert edit.edit.positions.flatten().tolist() == (mass > 0).float().tolist() and edit.edit.source == source


def test_an_automatic_strength_is_the_smallest_whose_codes_read_the_target(labelled, monkeypatch):
    seen = []

    def reached_from_the_third(codes, base_codes, target, rivals, where, typical):  # the judge, planted: reached at 4 and above
        seen.append(codes)
        return len(seen) >= 3

    monkeypatch.setattr(generation, "reads_target", reached_from_the_third)
    edit = labelled.edit("a blue square", 1, "colour=red", where="all")
    assert (edit.edit.strength, edit.edit.automatic, edit.edit.reached) == (LADDER[2], True, True)
    by_hand = labelled.edit("a blue square", 1, "colour=red", where="all", strength=LADDER[2])
    assert torch.allclose(edit.steered_images, by_hand.steered_images, atol=1e-5)  # the image of the chosen strength
    assert by_hand.edit.reached is None  # a strength by hand is not checked against the codes
    seen.clear()
    monkeypatch.setattr(generation, "reads_target", lambda *args: bool(seen.append(1)))  # never reached
    never = labelled.edit("a blue square", 1, "colour=red", where="all")
    assert (never.edit.strength, never.edit.reached, len(seen)) == (LADDER[-1], False, len(LADDER))  # the largest, said so


def test_the_codes_of_an_edited_run_are_those_of_its_recorded_trajectory(labelled):
    run = labelled.generator.base("a blue square", 1)
    info = labelled.edit("a blue square", 1, "colour=red", where="all", strength=3.0).edit
    latents, amounts = swap_amounts(run.codes, info.removed, info.target, labelled.typical_activation, 3.0, torch.ones(64))
    deltas = edit_deltas(latents, amounts, labelled.feature_trajectories)
    generated, codes = labelled.generator._recorded(run, deltas, (2, labelled.generator.num_steps - 1))
    recorder = TrajectoryRecorder(labelled.generator.site, labelled.generator.recorded_steps)  # independently: a whole run, recorded
    hook = SteeringHook(labelled.generator.site, deltas, labelled.generator.recorded_steps, (2, labelled.generator.num_steps - 1))
    with torch.no_grad():
        sample(labelled.generator.model, "a blue square", 1, num_steps=labelled.generator.num_steps,
               guidance_scale=labelled.generator.default_guidance, hooks=[hook, recorder])
    assert torch.allclose(codes, labelled.codes(recorder.trajectories()[0]), atol=1e-4)


def test_bad_edits_are_refused_and_change_nothing(labelled):
    cached = len(labelled.generator.base_runs)
    for bad, message in ((dict(target="colour=pink"), "values of colour"), (dict(target="colour=red", source="99"), "does not exist"),
                         (dict(target="colour=red", strength=float("nan")), "strength"), (dict(target="colour=red", where="inside"), "one of"),
                         (dict(target="colour=red", window=(4, 2)), "window"), (dict(target="colour=red", strength=1e9), "strength"),
                         (dict(target="colour=red", strength=-2.0), "strength"), (dict(target="colour=red", strength=31.0), "strength"),
                         (dict(target="colour=red", source="colour=red"), "share latents"), (dict(target="colour=red", source="1, 9"), "share"),
                         (dict(target=Concept("odd", (1, 2), (1.0,))), "2 latents but 1 weights"),
                         (dict(target=Concept("nan", (1,), (float("nan"),))), "weight")):
        with pytest.raises(ExplorerError, match=message):
            labelled.edit("a red circle", 77, **bad)
    with pytest.raises(ExplorerError, match="empty"):
        labelled.edit("", 0, "colour=red")
    assert len(labelled.generator.base_runs) == cached


def test_image_level_latents_are_refused_with_a_pointer_to_steering(labelled, monkeypatch):
    image_level = torch.zeros(32, dtype=torch.bool)
    image_level[9] = True
    monkeypatch.setitem(labelled.__dict__, "is_global", image_level)
    with pytest.raises(ExplorerError, match=r"\[9\] are image-level.*Steer tab"):
        labelled.edit("a red circle", 0, [9, 10])


def test_an_edit_with_nowhere_to_work_says_so_instead_of_running(labelled, monkeypatch):
    monkeypatch.setattr(generation, "object_positions", lambda decoded, spread=1.5: torch.zeros(len(decoded), dtype=torch.bool))
    with pytest.raises(ExplorerError, match="Nothing to edit in this image: it has no position on the object"):
        labelled.edit("a red circle", 5, [9], where="object")
    with pytest.raises(ExplorerError, match="Nothing to edit in this image: nothing on the object carries colour≠red"):
        labelled.edit("a red circle", 5, "colour=red", where="object")


def test_a_concept_with_a_dead_latent_is_refused(labelled):
    with pytest.raises(ExplorerError, match=r"Latents \[20\] never fired"):
        labelled.edit("a red circle", 0, [3, 20])


def test_auto_positions_follow_where_the_concept_belongs(labelled):
    run = labelled.generator.base("a red circle", 0)
    decoded = labelled.sae.decode(run.codes).detach()
    core, halo = object_positions(decoded).float(), object_positions(decoded, HALO_SPREAD).float()
    assert core.sum() <= halo.sum() and (core <= halo).all()  # the core lies inside the object with its halo
    red, gray = labelled.concept("colour=red"), labelled.concept("background=gray")
    for spec, source, region, positions in ((red, None, "object", core), (gray, None, "background", 1 - halo),
                                            (Concept("typed", (9,), (1.0,)), None, "all", torch.ones(64)),
                                            (red, gray, "background", 1 - halo)):  # a source says where to work
        resolved, found = labelled.generator._edit_positions(run, "auto", spec, source)
        assert resolved == region and torch.equal(found, positions)


@pytest.fixture(scope="module")
def upload(labelled):
    """An image the model made, saved as a user would upload it: its pixels, not its run."""
    return labelled.generator.base("a green star", 2).image


def test_an_upload_with_no_edit_is_its_own_faithful_reconstruction(labelled, upload):
    out = labelled.edit_image(upload, prompt="a green star")
    assert np.array_equal(np.asarray(out.base), np.asarray(upload))  # pixel-space model: the path ends on the upload itself
    assert np.array_equal(np.asarray(out.steered), np.asarray(upload))
    assert out.base_run.faithful and out.base_run.fidelity > 40
    calls = labelled.generator.sampler.calls
    assert labelled.edit_image(upload.copy(), prompt="a green star").base_run is out.base_run  # the same pixels: inverted once
    assert labelled.edit_image(upload, prompt="  a green star ").base_run is out.base_run  # a prompt is read stripped
    assert labelled.generator.sampler.calls == calls
    assert labelled.edit_image(upload, prompt="   ").base_run is labelled.edit_image(upload).base_run  # a blank one is no prompt


def test_steering_an_upload_departs_from_its_reconstruction_only_by_the_steering(labelled, upload):
    nothing = labelled.steer_image(upload, [Steer(9, 0.0)], window=(2, 5))
    assert torch.allclose(nothing.steered_images, nothing.base_run.result.images, atol=1e-5)
    steered = labelled.steer_image(upload, [Steer(9, 8.0)], window=(2, 5))
    assert not torch.allclose(steered.steered_images, nothing.base_run.result.images, atol=1e-2)
    assert torch.equal(labelled.steer_image(upload, Steer(9, 8.0), window=(2, 5)).steered_images, steered.steered_images)  # a lone Steer
    fired = labelled.steer_image(upload, [Steer(9, 8.0)], mask="fired")  # every mask works on an upload
    where = (nothing.base_run.codes[:, 9] > 0).float()
    deltas = steering_deltas([Steer(9, 8.0)], labelled.feature_trajectories, labelled.typical_activation, nothing.base_run.codes, where)
    expected = labelled.generator._steered(nothing.base_run, deltas, (0, labelled.generator.num_steps - 1))
    assert torch.allclose(fired.steered_images, expected.steered_images, atol=1e-6)


def test_an_edit_of_an_upload_is_exactly_the_steering_it_claims(labelled, upload):
    edit = labelled.edit_image(upload, {9: 3.0, 12: 1.0}, strength=4.0, where="all")
    steered = labelled.steer_image(upload, [Steer(9, 3.0), Steer(12, 1.0)])
    assert torch.allclose(edit.steered_images, steered.steered_images, atol=1e-5)
    swap = labelled.edit_image(upload, "colour=red", strength=2.0, where="all")
    assert swap.edit.removed.latents == (3, 4, 5) and swap.base_run is edit.base_run


def test_bad_edits_of_an_upload_are_refused_before_any_inversion(labelled, upload):
    calls, cached = labelled.generator.sampler.calls, len(labelled.generator.base_runs)
    for bad, message in ((dict(source="colour=red"), "needs a target"), (dict(target="colour=pink"), "values of colour"),
                         (dict(target="colour=red", strength=float("inf")), "strength"), (dict(target="colour=red", window=(9, 2)), "window"),
                         (dict(target="colour=red", prompt="red " * 40), "tokens long")):
        with pytest.raises(ExplorerError, match=message):
            labelled.edit_image(upload.rotate(90), **bad)
    with pytest.raises(ExplorerError, match="does not exist"):
        labelled.steer_image(upload.rotate(90), [Steer(999, 1.0)])
    assert labelled.generator.sampler.calls == calls and len(labelled.generator.base_runs) == cached
