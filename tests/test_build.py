import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import backend.build as build_module
import backend.io as io_module
import backend.method.sae_train as sae_train
from backend.build import Build, BuildConfig, main, parse_config
from backend.diffusion.collect import read_shards, shard_names
from backend.diffusion.models import model_sizes, save_model
from backend.serving.bundle import Bundle
from tests.tiny_models import tiny_model

PROMPTS = [f"a {c} {s} in the {p}" for c in ("red", "blue") for s in ("circle", "star") for p in ("top", "left", "center")]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def config(tmp_path, prompts=PROMPTS, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n\n")
    values = dict(model="tiny", out=str(tmp_path / "bundle"), prompts=str(prompt_file), num_steps=3, images_per_shard=4,
                  n_latents=32, k=4, epochs=2, sae_batch_size=128, top_n=4)
    return BuildConfig(**(values | overrides))


def bundle_tensors(root):
    return {name: load_file(root / name) for name in ("sae/sae.safetensors", "dynamics.safetensors", "atlas/tables.safetensors")}


def test_tiny_build_end_to_end(model, tmp_path):
    summary = Build(config(tmp_path), model=model).run()
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.n_latents == 32 and bundle.manifest["shapes"] == {"steps": 3, "dim": 16, "grid": [8, 8]}
    assert len(bundle.images) == len(PROMPTS) and bundle.thumbnails.shape == (len(PROMPTS), 16, 16, 3)
    assert summary["recall@10_images"] == 1.0 and len(summary["r2_per_step"]) == 2
    assert bundle.atlas["image_profile"].shape == (len(PROMPTS), 32)
    assert bundle.latent_map.shape == (32, 2) and torch.isfinite(bundle.latent_map).all()
    j, (image_id, score) = next((j, bundle.top_images(j, 1)[0]) for j in range(32) if bundle.top_images(j, 1))
    assert score == pytest.approx(float(bundle.atlas["image_profile"][image_id, j]), rel=1e-3)
    recorded = (tmp_path / "bundle" / "bundle.json").read_text()
    assert str(tmp_path) not in recorded  # no local output, work or prompt paths travel with a bundle
    assert bundle.manifest["build"]["prompts"] == "prompts.txt" and "out" not in bundle.manifest["build"]


def test_the_build_record_holds_relative_input_paths_and_no_output_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "models" / "demo"
    record = BuildConfig(model=str(model_dir), out="/elsewhere/bundle", work_dir="/elsewhere/work", prompts="/data/p.txt").portable_record()
    assert record["model"] == "models/demo" and record["prompts"] == "p.txt"
    assert not {"out", "work_dir", "device", "stages"} & set(record)


def test_interrupted_build_resumes_to_the_same_bundle(model, tmp_path, monkeypatch):
    Build(config(tmp_path / "a"), model=model).run()
    real_write = sae_train.write_safetensors
    calls = {"n": 0}

    def dies_in_training(path, tensors, metadata=None):
        if path.name == "sae-train.safetensors":
            calls["n"] += 1
            if calls["n"] == 2:  # after epoch 1 was saved, the process "dies" saving epoch 2
                raise KeyboardInterrupt
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(sae_train, "write_safetensors", dies_in_training)
    with pytest.raises(KeyboardInterrupt):
        Build(config(tmp_path / "b"), model=model).run()
    monkeypatch.undo()
    Build(config(tmp_path / "b"), model=model).run()

    # The float32 trainer state agrees to rounding (sparse kernels may sum in another order) ...
    expected, resumed = (load_file(tmp_path / run / "bundle.work" / "sae-train.safetensors") for run in ("a", "b"))
    for key in expected:
        assert torch.allclose(expected[key].float(), resumed[key].float(), atol=1e-5), key
    # ... and so do the shipped fp16 tensors, to within one fp16 rounding step.
    expected, resumed = bundle_tensors(tmp_path / "a" / "bundle"), bundle_tensors(tmp_path / "b" / "bundle")
    for name in expected:
        for key in expected[name]:
            assert torch.allclose(expected[name][key].float(), resumed[name][key].float(), rtol=2e-3, atol=1e-3), (name, key)


def test_collect_stage_resumes_from_its_last_shard(model, tmp_path, monkeypatch):
    import backend.diffusion.collect as collect

    cfg = config(tmp_path, stages="collect")
    real_write, real_sample = collect.write_safetensors, collect.sample
    written = []

    def dies_on_third_shard(path, tensors, metadata=None):
        written.append(path.name)
        if len(written) == 3:
            raise KeyboardInterrupt
        return real_write(path, tensors, metadata)

    monkeypatch.setattr(collect, "write_safetensors", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        Build(cfg, model=model).run()
    monkeypatch.setattr(collect, "write_safetensors", real_write)
    sampled = []
    monkeypatch.setattr(collect, "sample", lambda *a, **k: sampled.append(1) or real_sample(*a, **k))
    Build(cfg, model=model).run()
    assert shard_names(cfg.work / "collect") == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    assert len(sampled) == 1  # only the third shard (4 images, one sampler batch) was sampled again


def test_every_option_is_documented_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    help_text = capsys.readouterr().out
    for field in ("--model", "--shapes-prompts", "--positions-per-image", "--n-latents", "--stages", "--variant"):
        assert field in help_text


def test_missing_required_options_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        parse_config([])
    assert "--model and --out are required" in capsys.readouterr().err


def test_resuming_with_other_settings_is_refused(model, tmp_path):
    from backend.errors import ExplorerError

    Build(config(tmp_path, stages="collect,dynamics"), model=model).run()
    with pytest.raises(ExplorerError, match="dynamics stage made with other settings"):
        Build(config(tmp_path, stages="collect,dynamics", ridge=0.5), model=model).run()
    with pytest.raises(ExplorerError, match="collect stage made with other settings"):
        Build(config(tmp_path, prompts=PROMPTS[:-1], stages="collect"), model=model).run()


def test_rerunning_the_atlas_after_retraining_uses_the_new_sae(model, tmp_path):
    Build(config(tmp_path), model=model).run()
    first = Bundle.load(tmp_path / "bundle").atlas["top_image_score"].clone()
    (tmp_path / "bundle.work" / "sae-train.safetensors").unlink()
    Build(config(tmp_path, stages="train,atlas", epochs=3), model=model).run()
    bundle = Bundle.load(tmp_path / "bundle")
    assert not torch.equal(bundle.atlas["top_image_score"], first)
    fresh = bundle.codes(next(read_shards(tmp_path / "bundle.work" / "collect"))["traj"][:64].float())
    assert torch.allclose(fresh.amax(0), bundle.atlas["image_profile"][0].float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--out", "o", "--variant", "sideways"], "invalid choice"),
    (["--model", "m", "--out", "o", "--recorded-steps", "1"], "need two steps"),
])
def test_bad_options_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert message in capsys.readouterr().err


def test_missing_or_empty_prompt_files_are_clear_errors(tmp_path):
    from backend.errors import ExplorerError

    with pytest.raises(ExplorerError, match="Cannot read the prompts file"):
        Build(BuildConfig(model="m", out=str(tmp_path / "b"), prompts=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ExplorerError, match="has no prompts"):
        Build(BuildConfig(model="m", out=str(tmp_path / "b"), prompts=str(tmp_path / "empty.txt")))


def test_an_out_path_under_a_regular_file_is_one_line_and_exit_2(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--model", "tiny", "--out", str(blocker / "bundle"), "--prompts", str(prompts)])
    assert exit_.value.code == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--out" in errors[0].getMessage() and "\n" not in errors[0].getMessage()
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_mid_stage_is_one_line_and_leaves_no_partial_file(model, tmp_path, monkeypatch, caplog):
    cfg = config(tmp_path, stages="collect,dynamics")
    Build(cfg, model=model).run()

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr(io_module, "save_file", full_disk)
    monkeypatch.setattr(build_module, "load_model", lambda *a, **k: model)
    monkeypatch.setattr(build_module, "model_sizes", lambda source, dtype: model_sizes(model, dtype))  # "tiny" has no configs to read
    argv = ["--model", "tiny", "--out", cfg.out, "--prompts", cfg.prompts, "--num-steps", "3", "--images-per-shard", "4",
            "--n-latents", "32", "--k", "4", "--epochs", "2", "--sae-batch-size", "128", "--top-n", "4", "--stages", "train"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [] and not (tmp_path / "bundle" / "sae").exists()
    monkeypatch.undo()
    Build(config(tmp_path, stages="train,atlas,index"), model=model).run()  # space again: the same command finishes
    assert Bundle.load(tmp_path / "bundle").n_latents == 32


def test_a_build_killed_with_sigkill_mid_collect_resumes_to_a_bundle_that_matches_its_manifest(model, tmp_path):
    save_model(model, tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a {c} {s} number {i}" for i in range(12) for c in ("red", "blue") for s in ("circle", "star")))
    command = [sys.executable, "-m", "backend.build", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "bundle"),
               "--prompts", str(prompts), "--num-steps", "3", "--images-per-shard", "4", "--batch-size", "4", "--n-latents", "32",
               "--k", "4", "--epochs", "1", "--sae-batch-size", "128", "--top-n", "4", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = tmp_path / "bundle.work" / "collect"
    deadline = time.time() + 300
    while len(list(shards.glob("shard-*.json"))) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL and not (tmp_path / "bundle" / "bundle.json").exists()
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    bundle = Bundle.load(tmp_path / "bundle")  # every file's sha256 matches the manifest
    assert len(bundle.images) == 48 and bundle.n_latents == 32
