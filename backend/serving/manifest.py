"""The schema of `bundle.json`: every field's type and range, checked before anything in a bundle is read."""

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from backend.diffusion.hooks import SITE_MODULES
from backend.errors import ExplorerError
from backend.method.encodings import VARIANTS
from backend.serving.icons import MAX_ICON_STRENGTHS

FORMAT_VERSION = 2  # 2 added global latents (sae.global); version 1 bundles still load
READABLE_VERSIONS = (1, 2)

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(gt=0, le=10**9)]


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # later fields may be added; known ones are checked


class ModelInfo(Strict):
    source: Annotated[str, StringConstraints(min_length=1)]
    files: dict[str, Sha256] = {}  # sha256 of the model's weight files, by their path inside the model


class Schedule(Strict):
    num_steps: Annotated[int, Field(gt=0, le=10_000)]
    recorded_steps: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    guidance_scale: Annotated[float, Field(ge=0, le=100)] = 7.5

    @model_validator(mode="after")
    def steps_in_order(self):
        steps = self.recorded_steps
        if any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] >= self.num_steps:
            raise ValueError(f"recorded_steps must increase and stay below num_steps={self.num_steps}")
        return self


class Shapes(Strict):
    steps: Count
    dim: Count
    grid: tuple[Count, Count]


class SAEShape(Strict):
    d_in: Count
    n_latents: Count
    k: Count
    dense_directions: Annotated[int, Field(ge=0)] = 0  # backend/method/dense_part.py


class SAEInfo(SAEShape):
    """The per-position SAE, and for the global_local variant the image-level one under "global"."""

    image_level: SAEShape | None = Field(None, alias="global")


class IconInfo(Strict):
    """The feature icons' settings (backend/serving/icons.py), and the atlas whose typical activations their strengths are in units of."""

    prompt: str
    seed: Annotated[int, Field(ge=0)]
    strengths: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=MAX_ICON_STRENGTHS)]
    atlas_sha256: Sha256


class EffectInfo(Strict):
    """Effect labels (what adding a latent does, read from its strongest icon): who read them, and from which icons."""

    reader: Annotated[str, StringConstraints(min_length=1)]
    strength: Annotated[float, Field(allow_inf_nan=False)]
    icons_sha256: Sha256


class Manifest(Strict):
    format_version: Literal[READABLE_VERSIONS]
    model: ModelInfo
    site: Literal[tuple(SITE_MODULES)]
    schedule: Schedule
    variant: Literal[VARIANTS]
    shapes: Shapes
    sae: SAEInfo
    files: dict[str, Sha256]
    versions: dict[str, str] = {}
    build: dict = {}
    icons: IconInfo | None = None
    effects: EffectInfo | None = None

    @model_validator(mode="after")
    def consistent(self):
        if self.shapes.steps != len(self.schedule.recorded_steps):
            raise ValueError(f"shapes.steps={self.shapes.steps} but schedule.recorded_steps has {len(self.schedule.recorded_steps)} steps")
        for name, sae in (("sae", self.sae), ("sae.global", self.sae.image_level)):
            if sae is not None and sae.k > sae.n_latents:
                raise ValueError(f"{name}.k={sae.k} exceeds {name}.n_latents={sae.n_latents}")
            if sae is not None and sae.dense_directions >= sae.d_in:
                raise ValueError(f"{name}.dense_directions={sae.dense_directions} must be below {name}.d_in={sae.d_in}")
        if (self.variant == "global_local") != (self.sae.image_level is not None):
            raise ValueError("sae.global is there exactly when the variant is global_local")
        if self.sae.image_level is not None and (self.sae.image_level.d_in != self.sae.d_in or self.format_version < 2):
            raise ValueError("sae.global reads rows as wide as sae's, in bundle format 2 or later")
        return self


def validate_manifest(text: str, where: str) -> dict:
    """The manifest `text` as a dict once it matches the schema, or an ExplorerError naming the first fields that do not."""
    try:
        Manifest.model_validate_json(text)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise ExplorerError(f"{where} is not valid JSON; rebuild or re-download the bundle.") from None
        version = next((e for e in err.errors() if e["loc"] == ("format_version",)), None)
        if version is not None and version["type"] != "missing":
            raise ExplorerError(f"{where}: bundle format {version['input']!r} is not supported (this version reads "
                                f"{' and '.join(map(str, READABLE_VERSIONS))}); rebuild the bundle.") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in err.errors()[:3])
        more = f" (and {err.error_count() - 3} more)" if err.error_count() > 3 else ""
        raise ExplorerError(f"{where} does not describe a valid bundle: {problems}{more}. Rebuild the bundle.") from None
    return json.loads(text)
