"""One generation request and its limits: the single definition of what a valid request is,
shared by the CLI and the HTTP API (whose OpenAPI schema is generated from this model)."""
from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_PROMPT_CHARS = 500  # T5 reads at most 512 tokens; longer text is truncated anyway
MAX_IMAGES = 4
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 1024, 16  # FLUX packs 2x2 latents of an 8x VAE: multiples of 16
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1  # what the API promises back; torch generators take any 64-bit value
MAX_STRENGTH = 2.0
# Unicode categories refused in prompts: controls, surrogates, private use, unassigned.
BAD_CATEGORIES = {"Cc", "Cs", "Co", "Cn"}


class GenerateRequest(BaseModel):
    """What to draw. Unset steps/guidance/size fall back to the served revision's `sample` params."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="what to draw; the adapter's trigger phrase is prepended")
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="images, each with its own seed: seed, seed+1, ...")
    seed: int | None = Field(None, ge=0, le=MAX_SEED - MAX_IMAGES + 1, description="first seed; unset = random")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="denoising steps")
    guidance: float | None = Field(None, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False,
                                   description="FLUX guidance embedding value")
    size: int | None = Field(None, ge=MIN_SIZE, le=MAX_SIZE, multiple_of=SIZE_STEP,
                             description="width = height in pixels")
    strength: float = Field(1.0, ge=0.0, le=MAX_STRENGTH, allow_inf_nan=False,
                            description="LoRA scale: 0 = bare base, 1 = as trained")

    @field_validator("prompt")
    @classmethod
    def _printable(cls, v: str) -> str:
        bad = next((c for c in v if unicodedata.category(c) in BAD_CATEGORIES), None)
        if bad is not None:
            raise ValueError(f"contains a control, surrogate or unassigned character (U+{ord(bad):04X})")
        if not v.strip():
            raise ValueError("is blank")
        return v.strip()


def first_error(e: ValidationError) -> str:
    """`field: reason` of a pydantic error, the one line a user sees."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{field}: {err['msg']}"
