"""One generation request and its limits: the single definition of what a valid request is,
shared by the CLI and the HTTP API (whose OpenAPI schema is generated from this model)."""
from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_PROMPT_CHARS = 500  # T5 reads at most 512 tokens; longer text is truncated anyway
MAX_IMAGES = 4
MIN_SIZE, MAX_SIZE, SIZE_STEP = 64, 1024, 16  # FLUX packs 2x2 latents of an 8x VAE: multiples of 16
MAX_STEPS = 100
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1  # what the API promises back; torch generators take any 64-bit value
MAX_STRENGTH = 2.0
# A prompt is one line of printable text: no C0/C1 control characters, at least one non-space.
# The pattern goes into the OpenAPI schema (so clients and fuzzers know the rule); _printable
# checks the same with a clearer message, and also refuses lone surrogates (from undecodable argv).
CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
PROMPT_PATTERN = f"^[^{CONTROL}]*[^\\s{CONTROL}][^{CONTROL}]*$"


def integer(lo: int, hi: int, **constraints):
    """An int in [lo, hi]. JSON Schema's "integer" includes 4.0, which strict pydantic refuses, so
    integral floats become ints first ("4" and true stay errors, as the schema says). The bounds sit
    inside the Annotated so that `integer(...) | None` still puts them in the OpenAPI schema."""
    return Annotated[int, Field(ge=lo, le=hi, **constraints),
                     BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)]


class GenerateRequest(BaseModel):
    """What to draw. Unset steps/guidance/size fall back to the served revision's `sample` params."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, pattern=PROMPT_PATTERN,
                        description="what to draw, one line; the adapter's trigger phrase is prepended")
    n: integer(1, MAX_IMAGES) = Field(1, description="images, each with its own seed: seed, seed+1, ...")
    seed: integer(0, MAX_SEED - MAX_IMAGES + 1) | None = Field(None, description="first seed; unset = random")
    steps: integer(1, MAX_STEPS) | None = Field(None, description="denoising steps")
    guidance: Annotated[float, Field(ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)] | None = Field(
        None, description="FLUX guidance embedding value")
    size: integer(MIN_SIZE, MAX_SIZE, multiple_of=SIZE_STEP) | None = Field(None, description="width = height in pixels")
    strength: float = Field(1.0, ge=0.0, le=MAX_STRENGTH, allow_inf_nan=False,
                            description="LoRA scale: 0 = bare base, 1 = as trained")

    @field_validator("prompt", mode="before")
    @classmethod
    def _printable(cls, v):
        if not isinstance(v, str):
            return v  # strict validation says "should be a valid string"
        bad = next((c for c in v if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            raise ValueError(f"contains a control or surrogate character (U+{ord(bad):04X})")
        if not v.strip():
            raise ValueError("is blank")
        return v.strip()


def error_line(err: dict) -> str:
    """`field: reason` of one pydantic error (FastAPI's too: its body/path/header prefixes dropped)."""
    loc = [str(p) for p in err.get("loc", ())]
    if loc and loc[0] in ("body", "path", "header", "query"):
        loc = loc[1:]
    return f"{'.'.join(loc) or 'body'}: {str(err.get('msg', 'invalid')).removeprefix('Value error, ')}"
