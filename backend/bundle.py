"""A bundle: everything the app serves for one model × site, in one verified directory.

Layout: `bundle.json` (versioned manifest with the sha256 of every other file),
`sae/` (TopKSAE), `dynamics.safetensors` (LinearDynamics); later stages add the atlas and
indexes. Tensors are safetensors only; nothing is unpickled.
"""

import json
import logging
import operator
import platform
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from backend.dynamics import LinearDynamics
from backend.encodings import TrajectoryEncoding
from backend.errors import ExplorerError
from backend.io import sha256_file, write_json, write_safetensors
from backend.models import hub_offline
from backend.sae import TopKSAE

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
REQUIRED_KEYS = ("format_version", "model", "site", "schedule", "variant", "shapes", "sae", "files")


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
    if path.exists() or str(source).startswith((".", "/")) or str(source).count("/") != 1:
        raise ExplorerError(f"No bundle directory at {str(source)!r}; pass a bundle directory or a hub repo id like 'user/name'.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), local_files_only=hub_offline()))
    except Exception as err:
        mode = "in the local cache (offline mode)" if hub_offline() else "on the Hugging Face Hub"
        raise ExplorerError(f"Bundle {str(source)!r} was not found {mode}: {type(err).__name__}. Pass a local bundle directory instead.") from err


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
    sae: TopKSAE
    encoding: TrajectoryEncoding

    @classmethod
    def save(cls, root: str | Path, *, sae: TopKSAE, dynamics: LinearDynamics, variant: str, site: str,
             model: dict, schedule: dict, grid: tuple[int, int], extra: dict | None = None) -> "Bundle":
        """Write the SAE, the dynamics and a manifest describing them; returns the loaded bundle."""
        root = Path(root)
        encoding = TrajectoryEncoding(variant, dynamics)
        if sae.d_in != encoding.d_in():
            raise ExplorerError(f"SAE input width {sae.d_in} does not match the {variant} encoding's {encoding.d_in()}.")
        sae.save(root / "sae")
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
        sae = TopKSAE.load(root / "sae")
        encoding = TrajectoryEncoding(manifest["variant"], dynamics)
        shapes = manifest["shapes"]
        if (encoding.steps, encoding.dim) != (shapes["steps"], shapes["dim"]) or sae.d_in != encoding.d_in():
            raise ExplorerError(f"Bundle {root}: SAE, dynamics and bundle.json disagree on shapes; rebuild the bundle.")
        return cls(root=root, manifest=manifest, sae=sae, encoding=encoding)

    @staticmethod
    def _read_manifest(root: Path) -> dict:
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except FileNotFoundError as err:
            raise ExplorerError(f"{root} has no {MANIFEST}; it is not a bundle (or its build did not finish).") from err
        except json.JSONDecodeError as err:
            raise ExplorerError(f"{root / MANIFEST} is not valid JSON: {err}") from err
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ExplorerError(f"{root / MANIFEST} lacks {', '.join(missing)}; rebuild the bundle.")
        if manifest["format_version"] != FORMAT_VERSION:
            raise ExplorerError(f"Bundle format {manifest['format_version']} is not supported (this version reads {FORMAT_VERSION}); rebuild the bundle.")
        return manifest

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
