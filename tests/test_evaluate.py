import json
from pathlib import Path

import pytest
from PIL import Image

from backend.errors import ExplorerError
from backend.evaluation import evaluate
from backend.evaluation.edit_report import KEPT, write_edit_report
from backend.evaluation.edits import FRESH_SEED, edit_table, goal_lines, markdown
from backend.evaluation.uploads import UPLOAD_MECHANISMS, UPLOAD_SEED, upload_goal_lines
from backend.evaluation.evaluate import EvaluateConfig, Evaluation, parse_config
from backend.evaluation import report
from backend.evaluation.report import write_report
from backend.serving.bundle import Bundle

TINY = dict(model="checkpoints/shapes-model", sites="up_ft1", variants="residualized,global_local,per_step", seeds="0,1", train_images=20,
            test_images=3, num_steps=4, n_latents=48, k=6, epochs=1, sigma_latents=24, strengths="5",
            window_strength=5.0, targets_per_factor=1, images_per_target=1, concept_factors="background", concept_captions=2)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    config = EvaluateConfig(**TINY, work_dir=str(root / "work"), out=str(root / "docs"))
    runner = Evaluation(config)
    return runner, config, runner.run()


def test_every_variant_and_seed_is_measured_at_every_step(evaluation):
    _, config, results = evaluation
    runs = results["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [(v, seed) for v in ("residualized", "global_local", "per_step") for seed in (0, 1)]
    for run in runs:
        assert len(run["fvu_activation"]) == len(run["fvu_residual"]) == config.num_steps
        assert all(v >= 0 for v in run["fvu_activation"] + run["fvu_residual"]) and 0 <= run["dead_fraction"] <= 1
        assert set(run["sigma_label"]) == {"shape", "colour", "size", "position", "background"}
        assert all(t["kind"] in ("add", "ablate", "prompt") for t in run["trials"])
        located = run["localization"]
        assert 0 < located["object_share_chance"] < 1 and 0 <= located["image_wide_mass_share"] <= 1
        assert set(run["concepts"]["background"]) == {"black", "gray", "dark blue", "dark green"}
        assert all(rate in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0) for rate in run["concepts"]["background"].values())
        n_latents = config.n_latents + (config.global_latents if run["variant"] == "global_local" else 0)
        assert sum(run["temporal"]["peak_step_counts"]) == round((1 - run["dead_fraction_train"]) * n_latents)  # every latent that fired
    per_step = [r for r in runs if r["variant"] == "per_step"]
    assert all(r["fvu_activation"] == r["fvu_activation_one_step"] for r in per_step)
    assert runs[0]["fvu_activation"] != runs[1]["fvu_activation"]  # seeds train different SAEs
    assert len(results["r2_per_step"]["up_ft1"]) == config.num_steps - 1


def test_report_has_a_row_per_variant_and_valid_plots(evaluation):
    _, config, results = evaluation
    text = (Path(config.out) / "EVALUATION.md").read_text()
    assert "| up_ft1 | residualized | 2 |" in text and "| up_ft1 | per_step | 2 |" in text
    step = json.loads(Path(config.model, "training.json").read_text())["step"]
    assert f"Model `{config.model}` (training step {step})" in text
    assert "- up_ft1, FVU residual:" in text and "steering clean" in text and "| background found |" in text
    for name in ("eval-fvu.png", "eval-r2.png", "eval-purity.png", "eval-steering.png", "eval-peaks.png", "eval-insertion.png",
                 "eval-frontier.png"):
        with Image.open(Path(config.out) / name) as image:
            assert image.format == "PNG" and min(image.size) > 200


def test_a_rerun_reuses_finished_runs(evaluation, monkeypatch):
    runner, config, results = evaluation
    monkeypatch.setattr(evaluate, "Build", None)  # any training or collection would fail
    monkeypatch.setattr(Evaluation, "prepare_site", lambda self, site: (None, None, results["r2_per_step"][site]))
    assert runner.run()["runs"] == results["runs"]
    saved = json.loads((Path(config.work_dir) / "results.json").read_text())
    assert saved["runs"] == results["runs"]


def test_report_prose_follows_the_numbers(evaluation, tmp_path):
    _, _, results = evaluation
    flipped = json.loads(json.dumps(results))
    for run in flipped["runs"]:  # make per_step reconstruct far better than residualized
        run["fvu_residual"] = [0.01 if run["variant"] == "per_step" else 0.9] * len(run["fvu_residual"])
    text = write_report(flipped, tmp_path).read_text()
    assert "- up_ft1, FVU residual: best is per_step, not the residualized variant" in text


@pytest.mark.parametrize("argv, message", [(["--sites", "up_ft9"], "unknown site"), (["--variants", "pca"], "unknown variant"),
                                           (["--num-steps", "2"], "at least 3"), (["--concept-captions", "1"], "at least 2"),
                                           (["--concept-factors", "mood"], "unknown factor")])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert message in capsys.readouterr().err


def test_every_option_is_documented(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    out = capsys.readouterr().out
    for name in EvaluateConfig.__dataclass_fields__:
        assert f"--{name.replace('_', '-')}" in out


def test_a_rerun_with_other_settings_is_refused(evaluation, monkeypatch):
    _, config, results = evaluation
    changed = EvaluateConfig(**(vars(config) | {"n_latents": config.n_latents * 2}))
    monkeypatch.setattr(Evaluation, "prepare_site", lambda self, site: (None, None, results["r2_per_step"][site]))
    monkeypatch.setattr(evaluate, "load_model", lambda *a, **k: None)
    with pytest.raises(ExplorerError, match="other settings"):
        Evaluation(changed).run()


def test_concept_rows_follow_the_header_whatever_the_key_order(evaluation, tmp_path):
    _, _, results = evaluation
    mixed = json.loads(json.dumps(results))
    for i, run in enumerate(mixed["runs"]):
        run["concepts"] = {"shape": {"star": 0.0}, "background": {"black": 1.0}}
        if i % 2:  # half the runs list their factors the other way round, as fresh runs do beside runs read back
            run["concepts"] = dict(reversed(run["concepts"].items()))
    text = write_report(mixed, tmp_path).read_text()
    assert "| background found | shape found |" in text
    assert "| up_ft1 | residualized | 1.00 ± 0.00 | 0.00 ± 0.00 |" in text


def test_the_report_names_the_command_that_reproduces_it():
    config = EvaluateConfig(sites="up_ft1", variants="residualized,global_local", seeds="0", work_dir="elsewhere")
    command = config.command()
    assert command == "python -m backend.evaluate --sites up_ft1 --variants residualized,global_local --seeds 0"
    assert parse_config(command.split()[3:] + ["--work-dir", "elsewhere"]) == config


def test_edit_table_counts_reached_and_clean_per_factor_and_mechanism():
    rows = [dict(factor="colour", mechanism="m", target="red", seed=1, strength=s, reached=r, clean=c)
            for s, r, c in ((2.0, True, True), (4.0, True, False), (7.0, False, False), (3.0, True, True))]
    rows.append(dict(factor="colour", mechanism="p", target="red", seed=1, strength=None, reached=True, clean=True))
    table = edit_table(rows)
    assert table["colour"]["m"] == {"n": 4, "reached": 0.75, "clean": 0.5, "median_strength": 3.5}
    assert table["colour"]["p"] == {"n": 1, "reached": 1.0, "clean": 1.0, "median_strength": None}
    assert "| colour | m | 4 | 0.75 | 0.50 | 3.5 |" in markdown(table)


def test_the_edit_report_states_the_goals_and_keeps_notes_below_the_marker(tmp_path):
    name = "→ B in place of the other values, automatic strength"
    table = {"colour": {name: {"n": 16, "reached": 0.94, "clean": 0.75, "median_strength": 2.0}},
             "size": {name: {"n": 16, "reached": 0.5, "clean": 0.25, "median_strength": 4.0}}}
    assert goal_lines(table) == [f"- colour, {name}: reached 0.94 (goal ≥ 0.9), clean 0.75 (goal ≥ 0.7): **met**",
                                 f"- size, {name}: reached 0.50 (goal ≥ 0), clean 0.25 (goal ≥ 0.5): **missed**"]
    path = tmp_path / "EDITS.md"
    write_edit_report(table, {}, "cmd", "CPU", path)
    path.write_text(path.read_text() + "\n## Notes\nwhat else was tried\n")
    write_edit_report(table, {}, "cmd2", "CPU", path)
    text = path.read_text()
    assert "Made by `cmd2`" in text and text.endswith("## Notes\nwhat else was tried\n") and text.count(KEPT) == 1


def test_a_built_bundle_is_measured_as_it_ships_at_the_top_of_the_evaluation_and_resumes(evaluation, tmp_path, monkeypatch):
    _, config, results = evaluation
    bundle_dir = Path(config.work_dir) / "up_ft1" / "residualized-seed0" / "bundle"
    out = tmp_path / "docs"
    out.mkdir()
    (out / "EVALUATION.md").write_text("# Evaluation: SAE input variants\n\nthe variant comparison\n")
    shipped_config = EvaluateConfig(**TINY, work_dir=str(tmp_path / "work"), out=str(out), bundle=str(bundle_dir), shipped_images=3)
    result = evaluate.evaluate_shipped(shipped_config)
    trained_there = results["runs"][0]  # the same SAE, measured by the variant evaluation on its own test captions
    assert len(result["fvu_activation"]) == config.num_steps and result["fvu_activation"] != trained_there["fvu_activation"]
    assert result["dead_fraction_train"] == trained_there["dead_fraction_train"] and result["sigma_label"] == trained_there["sigma_label"]
    assert result["map_iou_object_daam"] == trained_there["map_iou_object_daam"]  # atlas measures: the same bundle
    assert 0 <= result["localization"]["image_wide_mass_share"] <= 1 and result["trials"] == trained_there["trials"]  # on atlas images
    assert set(result["concepts"]) == {"background"}
    text = (out / "EVALUATION.md").read_text()
    assert text.startswith("# Evaluation: SAE input variants\n\n<!-- The shipped bundle") and text.endswith("the variant comparison\n")
    image_wide = result["localization"]["image_wide_mass_share"]
    assert f"| image-wide mass | {image_wide:.3f} | ≤ 0.05: **{'met' if image_wide <= 0.05 else 'missed'}** |" in text
    paired = result["localization"]["image_wide_paired_mass_share"]
    assert 0 <= paired <= image_wide and f"| image-wide mass in ± pairs | {paired:.3f} |  |" in text
    assert set(result["map_iou_daam_by_factor"]) == {"colour", "shape", "size"} and "| colour mass ×chance |" in text
    assert set(result["label_map_iou_daam"]) == {"colour", "shape", "size"} and "| colour label map IoU, DAAM's rule |" in text
    monkeypatch.setattr(evaluate, "measure", lambda *a, **k: pytest.fail("a measured bundle was measured again"))
    assert evaluate.evaluate_shipped(shipped_config) == result
    again = (out / "EVALUATION.md").read_text()
    assert again == text and again.count("## The shipped bundle, as it ships") == 1
    monkeypatch.setattr(evaluate, "measures_digest", lambda: "a measure changed")
    with pytest.raises(pytest.fail.Exception, match="measured again"):  # the kept result is not the new measures'
        evaluate.evaluate_shipped(shipped_config)
    write_report(results, out)  # the variants measured again keep the shipped section at the top
    report = (out / "EVALUATION.md").read_text()
    assert report.count("## The shipped bundle, as it ships") == 1 and report.index("as it ships") < report.index("## What is measured")


def test_edits_of_a_built_bundle_are_measured_on_fresh_prompts_and_resume(evaluation, tmp_path, monkeypatch):
    _, config, _ = evaluation
    bundle_dir = Path(config.work_dir) / "up_ft1" / "residualized-seed0" / "bundle"
    factor, values = "background", ("black", "gray", "dark blue", "dark green")  # 20 atlas images label no latent: plant labels
    planted = [{"factor": factor, "value": values[j % 4], "purity": 0.5 + j / 100, "enrichment": 0.5} for j in range(16)]
    monkeypatch.setattr(Bundle, "labels", property(lambda bundle: planted + [{}] * (bundle.n_latents - 16)))
    edit_config = EvaluateConfig(**TINY, work_dir=str(tmp_path / "work"), out=str(tmp_path / "docs"), bundle=str(bundle_dir),
                                 edit_factors=factor, edit_trials=2, upload_factors=factor, upload_trials=2)
    table, uploads = evaluate.evaluate_edits(edit_config)
    assert set(table) == {factor}
    cells = table[factor]
    assert set(cells) >= {"→ B in place of the other values, automatic strength", "purest latent everywhere, α = 10",
                          "prompting (target in the caption)"}
    for cell in cells.values():
        assert cell["n"] <= 2 and 0 <= cell["clean"] <= cell["reached"] <= 1
    assert cells["→ B in place of the other values, automatic strength"]["n"] == 2
    rows = json.loads((tmp_path / "work" / "edits" / f"{factor}.json").read_text())["rows"]
    assert all(row["seed"] >= FRESH_SEED for row in rows)  # never an atlas, training or test seed
    assert f"| {factor} | → B in place of the other values, automatic strength | 2 |" in (tmp_path / "docs" / "EDITS.md").read_text()
    assert set(uploads[factor]) == set(UPLOAD_MECHANISMS)
    for cell in uploads[factor].values():
        assert cell["n"] == 2 and 0 <= cell["clean"] <= cell["reached"] <= 1 and 0 <= cell["kept"] <= 1
    assert uploads[factor]["held inversion, → B automatic"]["kept"] == 1.0  # a pixel-space model's held path ends on the upload
    rows = json.loads((tmp_path / "work" / "uploads" / f"{factor}.json").read_text())["rows"]
    assert all(row["seed"] >= UPLOAD_SEED for row in rows)
    assert f"| {factor} | held inversion, → B automatic | 2 | 1.00 |" in (tmp_path / "docs" / "EDITS.md").read_text()
    for measure in ("edit_trials", "upload_trials"):
        monkeypatch.setattr(evaluate, measure, lambda *a, **k: pytest.fail("a finished factor was measured again"))
    assert evaluate.evaluate_edits(edit_config) == (table, uploads)


def test_upload_goals_judge_the_apps_way_of_editing_an_upload():
    app, other = list(UPLOAD_MECHANISMS)[:2]
    cell = lambda kept, reached, clean: dict(n=16, kept=kept, reached=reached, clean=clean, median_strength=2.0)  # noqa: E731
    table = {"colour": {app: cell(1.0, 0.81, 0.62), other: cell(0.5, 1.0, 1.0)}, "background": {app: cell(0.88, 0.5, 0.25)}}
    assert upload_goal_lines(table) == [
        "- colour: reconstruction kept 1.00 of the readings (goal ≥ 0.9): **met**",
        f"- colour, {app}: reached 0.81 (goal ≥ 0.8), clean 0.62 (goal ≥ 0.6): **met**",
        "- background: reconstruction kept 0.88 of the readings (goal ≥ 0.9): **missed**"]
    assert markdown(table).splitlines()[2] == f"| colour | {app} | 16 | 1.00 | 0.81 | 0.62 | 2 |"


@pytest.mark.parametrize("value, verdict", [(0.05, "met"), (0.0500001, "missed"), (0.0, "met")])
def test_a_goal_of_at_most_a_bound_is_met_at_the_bound(value, verdict):
    assert report._goal_verdict("image-wide mass", value) == f"≤ 0.05: **{verdict}**"
    assert report._goal_verdict("object map IoU, DAAM's rule", 0.3) == "≥ 0.3: **met**"
    assert report._goal_verdict("object map IoU, DAAM's rule", 0.1) == "≥ 0.3: **missed**"
    assert report._goal_verdict("FVU activation", 0.2) == "" and report._goal_verdict("image-wide mass", float("nan")) == ""
