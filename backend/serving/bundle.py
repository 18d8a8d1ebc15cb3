"""A bundle: everything the app serves for one model × site, in one verified directory.

Layout: `bundle.json` (versioned manifest with the sha256 of every other file),
`sae/` (TopKSAE; a global_local bundle adds the image-level one in `sae/global/`), `dynamics.safetensors` (LinearDynamics), and from the atlas stage on
`atlas/` (tables, thumbnails, image and latent metadata) and `index/` (FAISS indexes too
large to rebuild at load). Tensors are safetensors only; nothing is unpickled.
"""

import json
import logging
import operator
import platform
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file
from torch import Tensor

# the request type of Bundle.generate and steer_image, for callers that must not load diffusers (ui/)
from backend.diffusion.steering import Steer
from backend.errors import ExplorerError
from backend.hub import hub_offline
from backend.io import sha256_file, write_json, write_safetensors
from backend.method.dynamics import LinearDynamics
from backend.method.encodings import TrajectoryEncoding
from backend.method.global_local import GlobalLocalSAE
from backend.method.sae import TopKSAE
from backend.serving.atlas import TemporalProfiles, image_spread, label_precision, temporal_profiles
from backend.serving.icons import EFFECTS_FILE, ICON_FILE, FeatureIcons, IconSettings
from backend.serving.manifest import FORMAT_VERSION, validate_manifest
from backend.serving.search import VectorIndex

if TYPE_CHECKING:  # diffusers loads only with a model, so the server can start before it
    from backend.diffusion.models import DiffusionModel

log = logging.getLogger(__name__)

MANIFEST = "bundle.json"
ATLAS_TABLES = ("frequency", "mean", "max", "typical", "histogram", "top_image_id", "top_image_score", "top_image_map",
                "top_patch_image", "top_patch_position", "top_patch_score")  # one row per latent; image_profile has one per image
MAP_FILE = "index/latent_map.safetensors"  # the index stage's 2-D map of all latents
# Two latents whose decoder directions meet at this cosine or below code one direction's two signs (TopK codes are ≥ 0)
SIGNED_PAIR = -0.9
CORE_FILES = ("sae/sae.safetensors", "sae/config.json", "dynamics.safetensors")


def library_versions() -> dict[str, str]:
    """Versions of what produced a bundle, for debugging mismatches later."""
    import diffusers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def resolve_source(source: str | Path) -> Path:
    """A local bundle directory for `source`: the path itself, or a hub snapshot (offline flags respected)."""
    path = Path(source)
    if path.is_dir():
        return path
    looks_local = path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1 or path.parent.is_dir()
    if looks_local:
        raise ExplorerError(f"No bundle directory at {str(source)!r}; pass a bundle directory or a hub repo id like 'user/name'.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), local_files_only=hub_offline()))
    except Exception as err:
        mode = "in the local cache (offline mode)" if hub_offline() else "on the Hugging Face Hub"
        raise ExplorerError(f"Bundle {str(source)!r} was not found {mode}: {type(err).__name__}. Pass a local bundle directory instead.") from err


def rewrite_manifest(root: str | Path, **entries) -> dict:
    """Re-hash a bundle after a stage added files, keeping what its manifest says and adding `entries`."""
    manifest = json.loads((Path(root) / MANIFEST).read_text())
    return write_manifest(root, {k: v for k, v in manifest.items() if k not in ("files", "versions", "format_version")} | entries)


def write_manifest(root: str | Path, info: dict) -> dict:
    """Hash every file under `root` and write `bundle.json` last, so a bundle is complete once it has one."""
    root = Path(root)
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    manifest = info | {"format_version": FORMAT_VERSION, "versions": library_versions(), "files": files}
    write_json(root / MANIFEST, manifest)
    return manifest


@dataclass
class Bundle:
    """A loaded, verified bundle. Build one with `Bundle.save`, open one with `Bundle.load`."""

    root: Path
    manifest: dict
    sae: TopKSAE | GlobalLocalSAE
    encoding: TrajectoryEncoding

    @classmethod
    def save(cls, root: str | Path, *, sae: TopKSAE | GlobalLocalSAE, dynamics: LinearDynamics, variant: str, site: str,
             model: dict, schedule: dict, grid: tuple[int, int], extra: dict | None = None) -> "Bundle":
        """Write the SAE, the dynamics and a manifest describing them; returns the loaded bundle."""
        root = Path(root)
        encoding = TrajectoryEncoding(variant, dynamics, grid[0] * grid[1])
        if sae.d_in != encoding.d_in():
            raise ExplorerError(f"SAE input width {sae.d_in} does not match the {variant} encoding's {encoding.d_in()}.")
        for stale in ("atlas", "index"):  # built from an earlier SAE: they would pass the new manifest's hashes
            shutil.rmtree(root / stale, ignore_errors=True)
        sae.save(root / "sae", dtype=torch.float16)
        write_safetensors(root / "dynamics.safetensors", {k: v.float() for k, v in dynamics.state_dict().items()})
        info = {
            "model": model, "site": site, "schedule": schedule, "variant": variant,
            "shapes": {"steps": encoding.steps, "dim": encoding.dim, "grid": list(grid)},
            "sae": sae.config(),
        } | (extra or {})
        write_manifest(root, info)
        return cls.load(root)

    @classmethod
    def load(cls, source: str | Path) -> "Bundle":
        """Open a bundle directory or hub repo id, verifying every file's sha256 first."""
        root = resolve_source(source)
        manifest = cls._read_manifest(root)
        unlisted = [name for name in CORE_FILES if name not in manifest["files"]]
        if unlisted:
            raise ExplorerError(f"{root / MANIFEST} does not list {', '.join(unlisted)}; the bundle is incomplete, rebuild it.")
        for name, digest in manifest["files"].items():
            path = cls._inside(root, name)
            if not path.is_file():
                raise ExplorerError(f"Bundle file {name} is missing from {root}; the bundle is incomplete, rebuild or re-download it.")
            if sha256_file(path) != digest:
                raise ExplorerError(f"Bundle file {name} in {root} is corrupt (sha256 mismatch); rebuild or re-download the bundle.")
        try:
            dynamics = LinearDynamics.from_state_dict(load_file(root / "dynamics.safetensors"))
        except Exception as err:
            raise ExplorerError(f"Bundle file dynamics.safetensors in {root} cannot be read: {err}") from err
        sae = (GlobalLocalSAE if "global" in manifest["sae"] else TopKSAE).load(root / "sae")
        shapes = manifest["shapes"]
        encoding = TrajectoryEncoding(manifest["variant"], dynamics, shapes["grid"][0] * shapes["grid"][1])
        if (encoding.steps, encoding.dim) != (shapes["steps"], shapes["dim"]) or sae.d_in != encoding.d_in():
            raise ExplorerError(f"Bundle {root}: SAE, dynamics and bundle.json disagree on shapes; rebuild the bundle.")
        return cls(root=root, manifest=manifest, sae=sae, encoding=encoding)

    @staticmethod
    def _read_manifest(root: Path) -> dict:
        try:
            text = (root / MANIFEST).read_text()
        except FileNotFoundError as err:
            raise ExplorerError(f"{root} has no {MANIFEST}; it is not a bundle (or its build did not finish).") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ExplorerError(f"{root / MANIFEST} cannot be read: {type(err).__name__}.") from err
        return validate_manifest(text, str(root / MANIFEST))

    @staticmethod
    def _inside(root: Path, name: str) -> Path:
        """`root / name`, refusing names that point outside the bundle."""
        path = (root / name).resolve()
        if not path.is_relative_to(root.resolve()):
            raise ExplorerError(f"Bundle manifest names {name!r}, a path outside the bundle; refusing to read it.")
        return path

    def file(self, name: str) -> Path:
        """Path of a file the manifest lists."""
        if name not in self.manifest["files"]:
            raise ExplorerError(f"Bundle has no file {name!r}.")
        return self._inside(self.root, name)

    @property
    def n_latents(self) -> int:
        return self.sae.n_latents

    @cached_property
    def is_global(self) -> Tensor:
        """Bool Tensor[n_latents]: image-level latents (global_local bundles), whose code is the same at every position."""
        return self.sae.is_global() if isinstance(self.sae, GlobalLocalSAE) else torch.zeros(self.n_latents, dtype=torch.bool)

    def check_latent(self, j: int) -> int:
        """`j` as an int, or a clear error when it is not a latent of this bundle."""
        try:
            j = operator.index(j)  # ints and integer tensors; not floats, strings or None
        except TypeError:
            raise ExplorerError(f"Latent id {j!r} is not an integer.") from None
        if not 0 <= j < self.n_latents:
            raise ExplorerError(f"Latent {j} does not exist; this bundle has latents 0 to {self.n_latents - 1}.")
        return j

    @cached_property
    def feature_trajectories(self) -> Tensor:
        """φ for every latent: Tensor[n_latents, T, d] (activation space, linear part)."""
        with torch.no_grad():
            return self.encoding.feature_trajectories(self.sae.W_dec)

    def feature_trajectory(self, j: int) -> Tensor:
        """φ_j,t over recorded steps: Tensor[T, d]."""
        return self.feature_trajectories[self.check_latent(j)]

    @cached_property
    def temporal_profiles(self) -> TemporalProfiles:
        """Every latent's ‖φ_t‖ and injected ‖c_t·D_t‖ relative to the activation scale at each step."""
        with torch.no_grad():
            deltas = self.encoding.block_deltas(self.sae.W_dec)
        return temporal_profiles(self.feature_trajectories, deltas, self.encoding.activation_scale())

    @cached_property
    def trajectory_vectors(self) -> Tensor:
        """φ in units of each step's activation scale, flattened: Tensor[n, T*d], what "similar latents" compares.

        Raw φ would be dominated by the early steps, where activations are largest.
        """
        return (self.feature_trajectories / self.encoding.activation_scale()[:, None]).flatten(1)

    # --- atlas: read-only tables built by the atlas stage -------------------------------------

    @property
    def has_atlas(self) -> bool:
        return "atlas/tables.safetensors" in self.manifest["files"]

    def _read(self, name: str, reader, fix: str = "rebuild the bundle's atlas"):
        """reader(path) for a listed file, with any failure to parse it named as that file's corruption and `fix` as the way out."""
        path = self.file(name)
        try:
            return reader(path)
        except Exception as err:  # the hash matched, so the content was written wrong: say which file
            raise ExplorerError(f"Bundle file {name} cannot be read ({type(err).__name__}); {fix}.") from err

    def _json_list(self, name: str, length: int) -> list[dict]:
        """A JSON file holding a list of `length` objects, or a clear error naming the file."""
        items = self._read(name, lambda path: json.loads(path.read_text()))
        if not isinstance(items, list) or len(items) != length or not all(isinstance(item, dict) for item in items):
            raise ExplorerError(f"Bundle file {name} should list {length} entries (one per atlas table row); rebuild the bundle's atlas.")
        return items

    @cached_property
    def atlas(self) -> dict[str, Tensor]:
        """Per-latent stats, top images and patches with maps, per-image profiles."""
        if not self.has_atlas:
            raise ExplorerError("This bundle has no atlas yet; run `python -m backend.build` through the atlas stage.")
        tables = self._read("atlas/tables.safetensors", load_file)
        missing = [key for key in ATLAS_TABLES if key not in tables]
        wrong = [key for key in ATLAS_TABLES if key in tables and tables[key].shape[:1] != (self.n_latents,)]
        profile = tables.get("image_profile")
        if missing or wrong or profile is None or profile.ndim != 2 or profile.shape[1] != self.n_latents or len(profile) == 0:
            raise ExplorerError(f"Bundle file atlas/tables.safetensors lacks or mis-shapes {', '.join(missing + wrong) or 'image_profile'} "
                                f"for {self.n_latents} latents and at least one image; rebuild the bundle's atlas.")
        return tables

    @cached_property
    def thumbnails(self) -> Tensor:
        """Atlas images as uint8 Tensor[n_images, h, w, 3]."""
        thumbnails = self._read("atlas/thumbnails.safetensors", load_file).get("thumbnails")
        if thumbnails is None or thumbnails.ndim != 4 or len(thumbnails) != self.n_images or thumbnails.dtype != torch.uint8:
            raise ExplorerError(f"Bundle file atlas/thumbnails.safetensors should hold {self.n_images} uint8 images; rebuild the bundle's atlas.")
        return thumbnails

    @property
    def n_images(self) -> int:
        """Atlas images (rows of the per-image table)."""
        return self.atlas["image_profile"].shape[0]

    @cached_property
    def images(self) -> list[dict]:
        """Per atlas image: prompt, seed and (shapes world) ground-truth factors."""
        images = self._json_list("atlas/images.json", self.n_images)
        if not all(isinstance(i.get("prompt"), str) and isinstance(i.get("seed"), int) for i in images):
            raise ExplorerError("Bundle file atlas/images.json has entries without a prompt or seed; rebuild the bundle's atlas.")
        return images

    @cached_property
    def labels(self) -> list[dict]:
        """Per latent: the most enriched factor value among its top images, with its purity."""
        return self._json_list("atlas/latents.json", self.n_latents)

    @cached_property
    def image_spread(self) -> Tensor:
        """Per latent: the mean share of an image's positions where it fires, over the atlas images where it fires (atlas.py)."""
        return image_spread(self.atlas["frequency"], self.atlas["histogram"], self.n_images)

    @cached_property
    def label_precision(self) -> Tensor:
        """Per latent: the share of its activation over all atlas images that is on images with its label's value (atlas.py)."""
        return label_precision(self.atlas["image_profile"], [image.get("factors", {}) for image in self.images], self.labels)

    @property
    def typical_activation(self) -> Tensor:
        """s_j: mean activation of latent j over its top images (the unit of steering strength)."""
        return self.atlas["typical"]

    def check_image(self, image_id: int) -> int:
        """`image_id` as an int, or a clear error when it is not an atlas image."""
        try:
            image_id = operator.index(image_id)
        except TypeError:
            raise ExplorerError(f"Image id {image_id!r} is not an integer.") from None
        if not 0 <= image_id < len(self.images):
            raise ExplorerError(f"Image {image_id} does not exist; the atlas has images 0 to {len(self.images) - 1}.")
        return image_id

    @staticmethod
    def _check_count(n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
            raise ExplorerError(f"Ask for between 1 and 1000 results, got {n!r}.")
        return n

    def top_images(self, j: int, n: int = 16) -> list[tuple[int, float]]:
        """Latent j's most activating atlas images, as (image_id, max activation), best first."""
        j, n = self.check_latent(j), self._check_count(n)
        ids, scores = self.atlas["top_image_id"][j, :n], self.atlas["top_image_score"][j, :n]
        return [(int(i), float(s)) for i, s in zip(ids, scores) if i >= 0 and s > 0]

    def quantile_images(self, j: int, bins: int = 4, per_bin: int = 2) -> list[tuple[int, int, float]]:
        """Atlas images from across latent j's activation range (sae_vis shows these beside the top-k).

        The images where j fired, ordered by their max activation, are cut into `bins` groups of
        equal count; from each, `per_bin` images evenly spread over it. Returns (bin, image_id,
        activation), weakest bin first, so one sees what a weak activation means too.
        """
        j = self.check_latent(j)
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 20:
            raise ExplorerError(f"Ask for between 1 and 20 quantile bins, got {bins!r}.")
        per_bin = self._check_count(per_bin)
        activations = self.atlas["image_profile"][:, j].float()
        fired = activations.nonzero().flatten()
        order = fired[activations[fired].argsort()]
        picked = []
        for b, group in enumerate(order.tensor_split(bins)):
            if len(group):
                spots = torch.linspace(0, len(group) - 1, min(per_bin, len(group))).round().long().unique()
                picked += [(b, int(i), float(activations[i])) for i in group[spots]]
        return picked

    def top_image_maps(self, j: int, n: int = 16) -> Tensor:
        """Spatial maps z[p, j] of latent j on its top images: Tensor[n, H, W]."""
        j, n = self.check_latent(j), self._check_count(n)
        return self.atlas["top_image_map"][j, :n].float().reshape(-1, *self.manifest["shapes"]["grid"])

    def top_patches(self, j: int, n: int = 16) -> list[tuple[int, int, int, float]]:
        """Latent j's most activating (image_id, row, col, activation) patches, best first."""
        j, n = self.check_latent(j), self._check_count(n)
        width = self.manifest["shapes"]["grid"][1]
        rows = zip(self.atlas["top_patch_image"][j, :n], self.atlas["top_patch_position"][j, :n], self.atlas["top_patch_score"][j, :n])
        return [(int(i), int(p) // width, int(p) % width, float(s)) for i, p, s in rows if i >= 0 and s > 0]

    @cached_property
    def latent_index(self) -> VectorIndex:
        """Latents by feature trajectory (`trajectory_vectors`, normalized)."""
        return self._index("latents", lambda: self.trajectory_vectors.numpy())

    @cached_property
    def image_index(self) -> VectorIndex:
        """Atlas images by latent profile (max-pooled codes, normalized)."""
        return self._index("images", lambda: self.atlas["image_profile"].float().numpy())

    @cached_property
    def latent_map(self) -> Tensor:
        """Float Tensor[n_latents, 2]: every latent placed by its feature trajectory (UMAP, latent_map.py)."""
        if MAP_FILE not in self.manifest["files"]:
            raise ExplorerError("This bundle has no map of its latents; rerun its build with `--stages index` to draw one.")
        xy = self._read(MAP_FILE, load_file).get("xy")
        if xy is None or xy.shape != (self.n_latents, 2) or not torch.isfinite(xy).all():
            raise ExplorerError(f"Bundle file {MAP_FILE} should hold finite 2-D coordinates for {self.n_latents} latents; rebuild the bundle's index.")
        return xy

    @property
    def has_icons(self) -> bool:
        return ICON_FILE in self.manifest["files"] and self.manifest.get("icons") is not None

    @cached_property
    def icons(self) -> FeatureIcons:
        """Every latent steered into one neutral prompt at a few strengths (the icons stage, icons.py)."""
        if not self.has_icons:
            raise ExplorerError("This bundle has no feature icons; rerun its build with `--stages icons` to draw them.")
        info = self.manifest["icons"]
        if info["atlas_sha256"] != self.manifest["files"].get("atlas/tables.safetensors"):
            raise ExplorerError("This bundle's feature icons were drawn before its atlas was rebuilt (their strengths are in the old "
                                "atlas's units); rerun its build with `--stages icons`.")
        tensors = self._read(ICON_FILE, load_file, fix="rerun its build with `--stages icons`")
        images, base, drawn = (tensors.get(name) for name in ("icons", "base", "drawn"))
        strengths = len(info["strengths"])
        if (images is None or base is None or drawn is None or images.dtype != torch.uint8 or base.dtype != torch.uint8
                or drawn.dtype != torch.bool or base.ndim != 3 or base.shape[-1] != 3
                or images.shape != (self.n_latents, strengths, *base.shape) or drawn.shape != (self.n_latents,)):
            raise ExplorerError(f"Bundle file {ICON_FILE} should hold uint8 icons for {self.n_latents} latents at {strengths} strengths, "
                                "their base image and which latents were drawn; rerun its build with `--stages icons`.")
        settings = IconSettings(info["prompt"], info["seed"], tuple(info["strengths"]))
        return FeatureIcons(settings=settings, base=base, images=images, drawn=drawn)

    @property
    def has_effects(self) -> bool:
        return EFFECTS_FILE in self.manifest["files"] and self.manifest.get("effects") is not None

    @cached_property
    def effects(self) -> list[list[dict] | None]:
        """Per latent, what adding it does: the factor values its strongest icon shows that the neutral image does not
        ([] for no visible change, None without an icon); read by `python -m backend.evaluation.icons BUNDLE --write-effects`."""
        if not self.has_effects:
            raise ExplorerError("This bundle has no effect labels; `python -m backend.evaluation.icons BUNDLE --write-effects` reads "
                                "them from its icons (shapes bundles: the factor classifier).")
        if self.manifest["effects"]["icons_sha256"] != self.manifest["files"].get(ICON_FILE):
            raise ExplorerError("This bundle's effect labels were read from icons it no longer has; rerun "
                                "`python -m backend.evaluation.icons BUNDLE --write-effects`.")
        fix = "rerun `python -m backend.evaluation.icons BUNDLE --write-effects`"
        effects = self._read(EFFECTS_FILE, lambda path: json.loads(path.read_text()), fix=fix)
        valid = isinstance(effects, list) and len(effects) == self.n_latents and all(
            e is None or (isinstance(e, list) and all(isinstance(c, dict) and isinstance(c.get("factor"), str)
                                                      and isinstance(c.get("value"), str) for c in e)) for e in effects)
        if not valid:
            raise ExplorerError(f"Bundle file {EFFECTS_FILE} should list {self.n_latents} effect labels; {fix}.")
        return effects

    def _index(self, name: str, vectors) -> VectorIndex:
        stored = f"index/{name}.faiss"
        if stored in self.manifest["files"]:
            return VectorIndex.load(self.file(stored))
        return VectorIndex.build(vectors())

    def similar_latents(self, j: int, n: int = 10) -> list[tuple[int, float]]:
        """Latents whose feature trajectories point the same way as j's, as (latent, cosine)."""
        j, n = self.check_latent(j), self._check_count(n)
        scores, ids = self.latent_index.search(self.trajectory_vectors[j][None].numpy(), n + 1)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != j and i >= 0][:n]

    def opposite_latents(self, ids: list[int], chunk_size: int = 256) -> list[tuple[int, float]]:
        """For each latent in `ids`, the latent whose decoder direction points most nearly the opposite way, as (latent,
        cosine). A pair at cosine ≤ SIGNED_PAIR codes one signed direction of the SAE's input, each latent firing where it
        has its sign: dense ones (about half of every image's positions) are how a TopK SAE writes a dense component.
        Decoder directions, not feature trajectories: the dynamics amplify the small part in which the two differ."""
        ids = [self.check_latent(j) for j in ids]
        decoder = self.sae.W_dec.detach()  # [d_in, n_latents]
        norms = decoder.norm(dim=0).float().clamp_min(1e-12)
        found = []
        for chunk in (ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)):  # memory: chunk × n_latents
            cosines = (decoder[:, chunk].T @ decoder).float() / (norms[chunk, None] * norms)
            lowest, other = cosines.min(1)
            found += zip(other.tolist(), lowest.tolist())
        return found

    def signed_pairs(self, ids: list[int]) -> dict[int, tuple[int, float]]:
        """Of the latents `ids`, those that are one side of a signed pair, with the other side: {latent: (other side,
        cosine)} for both sides, the other side looked up too when it was not asked. A pair is mutual: each is the other's
        most opposite latent (`opposite_latents`), at cosine ≤ SIGNED_PAIR."""
        ids = list(ids)
        opposite = dict(zip(ids, self.opposite_latents(ids)))
        partners = sorted({other for other, cosine in opposite.values() if cosine <= SIGNED_PAIR} - set(ids))
        opposite |= dict(zip(partners, self.opposite_latents(partners)))
        return {j: (other, cosine) for j, (other, cosine) in opposite.items()
                if cosine <= SIGNED_PAIR and opposite.get(other, (None,))[0] == j}

    def similar_images(self, image_id: int, n: int = 10) -> list[tuple[int, float]]:
        """Atlas images whose latent profiles are closest to image_id's, as (image_id, cosine)."""
        image_id, n = self.check_image(image_id), self._check_count(n)
        query = self.atlas["image_profile"][image_id].float()[None].numpy()
        scores, ids = self.image_index.search(query, n + 1)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != image_id and i >= 0][:n]

    def images_for_latents(self, weights: dict[int, float], n: int = 10) -> list[tuple[int, float]]:
        """Atlas images that best match a weighted set of latents, as (image_id, cosine)."""
        if not weights:
            raise ExplorerError("Pick at least one latent.")
        query = torch.zeros(self.n_latents)
        for j, w in weights.items():
            query[self.check_latent(j)] = float(w) * float(self.typical_activation[j])
        scores, ids = self.image_index.search(query[None].numpy(), self._check_count(n))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def search_latents(self, text: str) -> list[int]:
        """Latent ids matching `text`: an id, or words found in the latent's label."""
        text = (text or "").strip().lower()
        if not text:
            return list(range(self.n_latents))
        if text.isascii() and text.isdigit():  # "²" is a digit to isdigit, not to int
            return [int(text)] if len(text) < 10 and int(text) < self.n_latents else []
        words = text.split()
        labels = self.labels if self.has_atlas else [{}] * self.n_latents
        return [j for j, label in enumerate(labels) if all(w in label_text(label).lower() for w in words)]

    # --- maps and generation -------------------------------------------------------------------

    def codes(self, traj: Tensor) -> Tensor:
        """SAE codes of trajectories Tensor[P, T, C]: Tensor[P, n_latents] (per_step: max over steps)."""
        with torch.no_grad():
            codes = self.sae.encode(self.encoding.to_rows(traj))
        if self.encoding.variant == "per_step":
            codes = codes.reshape(traj.shape[0], traj.shape[1], -1).amax(1)
        return codes

    def maps_over_time(self, traj: Tensor, latents: list[int], codes: Tensor | None = None) -> Tensor:
        """Codes of `latents` from the prefix encoding after each recorded step: Tensor[L, T, H, W] (DESIGN.md step 6).

        At each step: pre-activations of all latents from the trajectory known so far, TopK per
        position, then the latents' codes, so a frame is what the SAE encodes if the trajectory
        stopped there. The last prefix is the whole input, so that frame is `codes(traj)` itself
        (per_step: every step is its own input); pass `codes` when they are known already.
        """
        latents = [self.check_latent(j) for j in latents]
        sae, steps = self.sae, self.encoding.steps
        prefixed = self.encoding.variant != "per_step"
        with torch.no_grad():
            prefixes = self.encoding.prefix_pre_activations(traj, sae.W_enc, sae.b_enc - sae.W_enc @ sae.b_pre)
            frames = [sae.activate(pre)[:, latents] for _, pre in zip(range(steps - 1 if prefixed else steps), prefixes)]
            if prefixed:
                frames.append((self.codes(traj) if codes is None else codes)[:, latents])
        grid = self.manifest["shapes"]["grid"]
        return torch.stack(frames).permute(2, 0, 1).reshape(len(latents), steps, *grid)

    def attach_model(self, model: "DiffusionModel") -> None:
        """Give the bundle a model to generate with (the one its trajectories came from)."""
        from backend.serving.generation import Generator

        self.generator = Generator(self, model)

    @property
    def _generator(self):
        if getattr(self, "generator", None) is None:
            raise ExplorerError("This bundle has no model attached; generation needs the model it was built from.")
        return self.generator

    def generate(self, prompt: str, seed: int, steering=(), **options):
        """Base and steered images (see `Generator.generate`); needs `attach_model` first."""
        return self._generator.generate(prompt, seed, steer_list(steering), **options)

    def concept(self, spec):
        """A Concept (concepts.py): 'factor=value', latent ids, {latent: weight} or a Find result; a bad spec is an ExplorerError."""
        from backend.serving.concepts import concept

        return concept(spec, self.labels if self.has_atlas else [{}] * self.n_latents, self.n_latents)

    def edit(self, prompt: str, seed: int, target, source=None, strength: float | None = None, window=None, where: str = "auto",
             **options):
        """A concept edit (see `Generator.edit`): base and edited images, `.edit` says what was done; needs `attach_model`."""
        return self._generator.edit(prompt, seed, target, source, strength, window, where, **options)

    def steer_image(self, image, steering=(), prompt: str = "", **options):
        """An uploaded PIL image steered beside its reconstruction (see `Generator.steer_image`); needs `attach_model`."""
        return self._generator.steer_image(image, steer_list(steering), prompt, **options)

    def edit_image(self, image, target=None, source=None, prompt: str = "", strength: float | None = None, window=None,
                   where: str = "auto", **options):
        """A concept edit of an uploaded PIL image beside its reconstruction (see `Generator.edit_image`); needs `attach_model`."""
        return self._generator.edit_image(image, target, source, prompt, strength, window, where, **options)

    def contrast(self, with_prompts: list[str], without_prompts: list[str], seeds=(0, 1), n: int = 20):
        """Latents that fire more on `with_prompts` than on `without_prompts` (contrast.py), best first; needs `attach_model`."""
        from backend.serving.contrast import contrast

        return contrast(self._generator, with_prompts, without_prompts, seeds, self._check_count(n))


def steer_list(steering) -> list:
    """A lone Steer as a list of one; anything else as a list (the generator checks its items)."""
    return [steering] if isinstance(steering, Steer) else list(steering)


def label_text(label: dict) -> str:
    """A latent label as searchable text, e.g. "colour red (purity 0.94)"."""
    if not label.get("factor"):
        return ""
    return f"{label['factor']} {label['value']} (purity {label['purity']:.2f})"
