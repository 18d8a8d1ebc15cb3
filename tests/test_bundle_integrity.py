"""Corrupt and mismatched bundles: each is refused with a message that names the field or file, and nothing else breaks."""

import hashlib
import json
import shutil

import pytest

from backend.diffusion.models import weight_digests
from backend.errors import ExplorerError
from backend.serving.bundle import Bundle, rewrite_manifest
from backend.serving.opener import open_bundle
from tests.test_ui_handlers import ui_bundle_dir
from ui.explorer import Explorer, open_explorer

DEMO_MODEL = "checkpoints/shapes-model"


@pytest.fixture
def bundle_copy(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(ui_bundle_dir(), root)
    return root


def edit_manifest(root, change) -> None:
    manifest = json.loads((root / "bundle.json").read_text())
    change(manifest)
    (root / "bundle.json").write_text(json.dumps(manifest))


MANIFEST_CASES = {
    "files as a list": (lambda m: m.update(files=list(m["files"])), "files"),
    "unknown variant": (lambda m: m.update(variant="bogus"), "variant"),
    "shapes without grid": (lambda m: m["shapes"].pop("grid"), "shapes.grid"),
    "num_steps as text": (lambda m: m["schedule"].update(num_steps="twenty"), "schedule.num_steps"),
    "recorded steps out of order": (lambda m: m["schedule"].update(recorded_steps=[2, 1, 0]), "recorded_steps must increase"),
    "recorded step past the schedule": (lambda m: m["schedule"].update(recorded_steps=[0, 1, 6]), "below num_steps"),
    "steps disagree with the schedule": (lambda m: m["shapes"].update(steps=5), "shapes.steps"),
    "k above the latents": (lambda m: m["sae"].update(k=1000), "exceeds sae.n_latents"),
    "unknown site": (lambda m: m.update(site="down_ft9"), "site"),
    "negative grid": (lambda m: m["shapes"].update(grid=[-4, 4]), "shapes.grid"),
    "a hash that is no sha256": (lambda m: m["files"].update({"dynamics.safetensors": "abc"}), "files.dynamics.safetensors"),
    "a model without a source": (lambda m: m.update(model={}), "model.source"),
    "a newer format": (lambda m: m.update(format_version=3), "format 3 is not supported"),
    "global latents in a residualized bundle": (lambda m: m["sae"].update({"global": dict(m["sae"], n_latents=8, k=2)}),
                                                "sae.global is there exactly when"),
    "a global_local bundle without global latents": (lambda m: m.update(variant="global_local"), "sae.global is there exactly when"),
    "global latents in format 1": (lambda m: m.update(variant="global_local", format_version=1,
                                                      sae=dict(m["sae"], **{"global": dict(m["sae"], n_latents=8, k=2)})),
                                   "format 2 or later"),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_a_malformed_manifest_is_refused_naming_the_field(bundle_copy, case):
    change, expected = MANIFEST_CASES[case]
    edit_manifest(bundle_copy, change)
    with pytest.raises(ExplorerError, match="bundle.json") as err:
        Bundle.load(bundle_copy)
    assert expected in str(err.value)
    assert Bundle.load(ui_bundle_dir()).n_latents == 32  # the good bundle is untouched


@pytest.mark.parametrize("text", ["not json {", "[]", "null", '{"format_version": 1}'])
def test_a_manifest_that_is_not_a_bundle_description_is_refused(bundle_copy, text):
    (bundle_copy / "bundle.json").write_text(text)
    with pytest.raises(ExplorerError, match="bundle.json"):
        Bundle.load(bundle_copy)


def corrupt_header(path):
    path.write_bytes(b"\xff" * 8 + path.read_bytes()[8:])


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CONTENT_CASES = {
    "bad safetensors header": ("atlas/tables.safetensors", corrupt_header),
    "truncated atlas table": ("atlas/tables.safetensors", truncate),
    "truncated thumbnails": ("atlas/thumbnails.safetensors", truncate),
    "latents.json not JSON": ("atlas/latents.json", lambda p: p.write_text("{not json")),
    "images.json empty": ("atlas/images.json", lambda p: p.write_text("[]")),
    "images.json of numbers": ("atlas/images.json", lambda p: p.write_text(json.dumps(list(range(9))))),
    "latents.json an object": ("atlas/latents.json", lambda p: p.write_text("{}")),
    "bad SAE header": ("sae/sae.safetensors", corrupt_header),
    "SAE config not JSON": ("sae/config.json", lambda p: p.write_text("[")),
    "bad dynamics header": ("dynamics.safetensors", corrupt_header),
}


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_corrupt_content_under_matching_hashes_is_named_with_its_file(bundle_copy, case):
    name, corrupt = CONTENT_CASES[case]
    corrupt(bundle_copy / name)
    rewrite_manifest(bundle_copy)  # the hashes match the corrupt content: only parsing can tell
    with pytest.raises(ExplorerError) as err:
        open_explorer(str(bundle_copy), model_source=str(bundle_copy / "no-model"))
    folder, file = name.rsplit("/", 1) if "/" in name else ("", name)
    assert file in str(err.value) or (folder == "sae" and "SAE" in str(err.value))
    assert open_explorer(str(ui_bundle_dir()), model_source=str(bundle_copy / "no-model")).table.labels  # the good one still opens


@pytest.fixture(scope="module")
def bundle_with_model(tmp_path_factory):
    """The tiny bundle naming a copy of the demo model and the sha256 of its weight files."""
    root = tmp_path_factory.mktemp("weights")
    shutil.copytree(ui_bundle_dir(), root / "bundle")
    shutil.copytree(DEMO_MODEL, root / "model")
    edit_manifest(root / "bundle", lambda m: m.update(model={"source": str(root / "model"), "files": weight_digests(str(root / "model"))}))
    return root


def test_the_bundles_own_weights_load(bundle_with_model):
    opened = open_bundle(str(bundle_with_model / "bundle"))
    assert opened.notice == "" and opened.bundle.generator is not None
    recorded = opened.bundle.manifest["model"]["files"]
    assert set(recorded) == {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}
    for name, digest in recorded.items():
        assert digest == hashlib.sha256((bundle_with_model / "model" / name).read_bytes()).hexdigest()


def test_a_flipped_byte_in_the_model_switches_generation_off_naming_no_local_path(bundle_with_model, caplog):
    weights = bundle_with_model / "model" / "unet" / "diffusion_pytorch_model.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    try:
        explorer = open_explorer(str(bundle_with_model / "bundle"))
        assert not explorer.can_generate and "Generation is off" in explorer.notice
        assert str(bundle_with_model) not in explorer.notice and "/" not in explorer.notice.replace("unet/", "")
        assert "unet/diffusion_pytorch_model.safetensors differs" in caplog.text  # the server's log says which file
        chosen = open_bundle(str(bundle_with_model / "bundle"), model_source=str(bundle_with_model / "model"))
        assert chosen.bundle.generator is not None  # --model is the explicit choice of other weights
    finally:
        weights.write_bytes(original)


def test_a_missing_model_names_no_local_path(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(model={"source": str(bundle_copy / "gone")}))
    explorer = open_explorer(str(bundle_copy))
    assert isinstance(explorer, Explorer) and not explorer.can_generate
    assert str(bundle_copy) not in explorer.notice
