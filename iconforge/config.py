"""Typed, frozen configuration built from params.yaml, validated up front.

Each DVC stage reads only the sections (or keys) it declares in dvc.yaml, via
`load(<Config class>)`. A wrong value stops the stage before any work with a
ConfigError naming the key, e.g. `rasterize.size: must be > 0, got -5`.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from ruamel.yaml import YAML

from iconforge.errors import StageError

PARAMS_FILE = Path("params.yaml")

# The licenses of the bioicons folders; anything else in filter.licenses is a typo.
KNOWN_LICENSES = ("cc-0", "mit", "bsd", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0")
# SVG renderers iconforge.dataset.svg can draw with.
RENDERERS = ("cairosvg", "resvg")
# The datasets fetch can read: the bioicons SVG archive, or parquet shards of image + text rows (logos).
SOURCES = ("bioicons", "parquet")
SELECTIONS = ("all", "last", "random")  # filter.select, for parquet rows
CAPTION_FIELDS = ("trigger", "name", "category", "keywords", "text")  # caption.template placeholders


def _hex_or_empty(cfg: "Section", name: str, value: str, digits: int) -> None:
    v = value.lower()
    _check(v == "" or (len(v) == digits and all(c in "0123456789abcdef" for c in v)),
           cfg.key(name), f"must be empty or {digits} hex digits", value)


OPERATIONAL = "operational"  # typing.Annotated marker, see Section.operational


class ConfigError(StageError, ValueError):
    """A params.yaml value is missing or invalid; the message names the key."""


def _check(ok: bool, key: str, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}, got {value!r}")


@dataclass(frozen=True)
class Section:
    """Base of the config classes: `section` is the params.yaml top-level key."""

    section: typing.ClassVar[str] = ""

    def key(self, name: str) -> str:
        return f"{self.section}.{name}"

    @classmethod
    def operational(cls) -> frozenset[str]:
        """Fields marked Operational: they change how a stage runs, never what it produces,
        so dvc.yaml leaves them out of the stage's params and changing one reruns nothing."""
        hints = typing.get_type_hints(cls, include_extras=True)
        return frozenset(f.name for f in dataclasses.fields(cls)
                         if OPERATIONAL in getattr(hints[f.name], "__metadata__", ()))

    @classmethod
    def result_keys(cls) -> list[str]:
        """The leaf keys a stage's results depend on: `section.field` of every non-operational field."""
        return [f"{cls.section}.{f.name}" for f in dataclasses.fields(cls) if f.name not in cls.operational()]

    def positive(self, *names: str) -> None:
        for n in names:
            _check(getattr(self, n) > 0, self.key(n), "must be > 0", getattr(self, n))

    def non_negative(self, *names: str) -> None:
        for n in names:
            _check(getattr(self, n) >= 0, self.key(n), "must be >= 0", getattr(self, n))

    def one_of(self, name: str, choices: tuple) -> None:
        v = getattr(self, name)
        _check(v in choices, self.key(name), f"must be one of {', '.join(map(str, choices))}", v)


@dataclass(frozen=True)
class FetchConfig(Section):
    section: typing.ClassVar[str] = "fetch"
    source: str  # one of SOURCES: which dataset every later stage works on
    # bioicons: the source archive
    url: str  # https:// URL, file:// URL or local path (relative to the repo root)
    sha256: str  # "" = do not verify
    revision: str  # upstream commit of an archive whose top folder names none; "" = read it from the top folder
    # parquet: the shards, each like url; shards_sha256 empty, or one entry ("" = do not verify) per shard
    shards: tuple[str, ...]
    shards_sha256: tuple[str, ...]
    image_column: str  # struct<bytes: binary, path: string> (Hugging Face Image) or binary
    text_column: str  # string
    timeout_s: Annotated[float, OPERATIONAL]
    retries: Annotated[int, OPERATIONAL]

    def __post_init__(self):
        self.one_of("source", SOURCES)
        _check(bool(self.url.strip()), self.key("url"), "must not be empty", self.url)
        _hex_or_empty(self, "sha256", self.sha256, 64)
        _hex_or_empty(self, "revision", self.revision, 40)
        for s in self.shards_sha256:
            _hex_or_empty(self, "shards_sha256", s, 64)
        _check(self.source != "parquet" or len(self.shards) > 0, self.key("shards"),
               "must name at least one shard when fetch.source is parquet", self.shards)
        _check(all(u.strip() for u in self.shards), self.key("shards"), "must not hold an empty URL", self.shards)
        _check(len(self.shards_sha256) in (0, len(self.shards)), self.key("shards_sha256"),
               f"must be empty or hold one entry per shard ({len(self.shards)})", self.shards_sha256)
        for name in ("image_column", "text_column"):
            _check(bool(getattr(self, name).strip()), self.key(name), "must not be empty", getattr(self, name))
        self.positive("timeout_s")
        self.non_negative("retries")


@dataclass(frozen=True)
class FilterConfig(Section):
    section: typing.ClassVar[str] = "filter"
    licenses: tuple[str, ...]
    categories_include: tuple[str, ...]  # empty = every category
    categories_exclude: tuple[str, ...]
    max_svg_bytes: int
    drop_embedded_raster: bool
    val_fraction: float
    seed: int
    variants: str  # "all": keep every colour/detail variant; "one": one per group
    # parquet rows (logos): which rows, their bounds, near-duplicate grouping and the dataset's credit
    select: str  # one of SELECTIONS: every row, the last select_n rows, or a seeded random select_n
    select_n: int
    max_caption_chars: int
    max_image_bytes: int
    near_dup_bits: int  # images whose 64-bit dHashes differ in at most this many bits share a group
    dataset_license: str  # license id recorded for every row
    dataset_license_url: str
    dataset_attribution: str  # credit text required by the dataset's license ("" = none)
    dataset_source: str  # the dataset's page, linked from the credits

    def __post_init__(self):
        self.one_of("select", SELECTIONS)
        _check(self.select == "all" or self.select_n > 0, self.key("select_n"),
               "must be > 0 when filter.select is last or random", self.select_n)
        self.positive("max_caption_chars", "max_image_bytes")
        _check(0 <= self.near_dup_bits <= 16, self.key("near_dup_bits"), "must be in [0, 16]", self.near_dup_bits)
        _check(bool(self.dataset_license.strip()), self.key("dataset_license"), "must not be empty",
               self.dataset_license)
        for lic in self.licenses:
            _check(lic in KNOWN_LICENSES, self.key("licenses"),
                   f"unknown license (known: {', '.join(KNOWN_LICENSES)})", lic)
        _check(len(self.licenses) > 0, self.key("licenses"), "must name at least one license", self.licenses)
        self.positive("max_svg_bytes")
        _check(0 <= self.val_fraction < 1, self.key("val_fraction"), "must be in [0, 1)", self.val_fraction)
        self.one_of("variants", ("all", "one"))


@dataclass(frozen=True)
class RasterizeConfig(Section):
    section: typing.ClassVar[str] = "rasterize"
    size: int
    margin: float  # fraction of `size` left blank on each side
    timeout_s: Annotated[float, OPERATIONAL]  # per icon
    max_memory_mb: Annotated[int, OPERATIONAL]  # per worker process
    workers: Annotated[int, OPERATIONAL]  # 0 = one per CPU core
    renderer: str  # one of RENDERERS

    def __post_init__(self):
        self.positive("size", "timeout_s", "max_memory_mb")
        _check(0 <= self.margin < 0.5, self.key("margin"), "must be in [0, 0.5)", self.margin)
        self.non_negative("workers")
        self.one_of("renderer", RENDERERS)


@dataclass(frozen=True)
class CaptionConfig(Section):
    section: typing.ClassVar[str] = "caption"
    trigger: str
    template: str  # placeholders: CAPTION_FIELDS (iconforge.dataset.captions says what each holds per dataset)
    drop_boilerplate: bool = True  # logos: {text} without the template's fixed tail ("successful vibe, minimalist, ...")

    def __post_init__(self):
        try:
            self.template.format(**{f: f for f in CAPTION_FIELDS})
        except (KeyError, IndexError, ValueError) as e:
            allowed = " ".join(f"{{{f}}}" for f in CAPTION_FIELDS)
            raise ConfigError(f"{self.key('template')}: bad placeholder {e} "
                              f"(allowed: {allowed}), got {self.template!r}") from None


@dataclass(frozen=True)
class ModelConfig(Section):
    section: typing.ClassVar[str] = "model"
    base: str  # "tiny", a hub id (org/name) or a local diffusers directory
    revision: str  # pinned hub commit; ignored for tiny and local paths
    # tiny only: steps of training its random VAE on the train split so it reconstructs icons
    # (iconforge/flux/vae.py); 0 = keep the random VAE (fast, what unit tests use)
    tiny_vae_steps: int = 0

    def __post_init__(self):
        self.non_negative("tiny_vae_steps")
        b = self.base.strip()
        ok = b == "tiny" or Path(b).is_dir() or (b.count("/") == 1 and not b.startswith((".", "/")))
        _check(ok, self.key("base"), "must be 'tiny', a hub id like org/name, or an existing local directory", self.base)


# LoRA target presets (module-name suffixes peft matches in every transformer block).
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TARGET_PRESETS = {
    "attention": ATTENTION,  # image-stream attention (and the single blocks' q/k/v)
    "attention_text": ATTENTION + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),  # + text-stream projections
    # Every linear layer of the blocks, as diffusers' train_dreambooth_lora_flux.py trains by default.
    "all_linear": ATTENTION + ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "ff.net.0.proj", "ff.net.2",
                               "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp"),
}
TIMESTEP_SCHEMES = ("uniform", "logit_normal", "sigmoid")
# train.quantize: none, or the base transformer in int8 (torchao) / NF4 (bitsandbytes); iconforge.flux.quantize
QUANTIZE_MODES = ("none", "int8", "nf4")


@dataclass(frozen=True)
class TrainConfig(Section):
    section: typing.ClassVar[str] = "train"
    seed: int
    steps: int
    lr: float
    rank: int
    alpha: float
    batch_size: int
    grad_accum: int
    resolution: int
    mixed_precision: str
    gradient_checkpointing: bool
    targets: str  # LoRA target preset, one of TARGET_PRESETS
    timestep_sampling: str  # how t in (0, 1) is drawn, one of TIMESTEP_SCHEMES
    logit_mean: float  # logit_normal: t = sigmoid(N(logit_mean, logit_std))
    logit_std: float
    sigmoid_scale: float  # sigmoid (kohya's name): t = sigmoid(sigmoid_scale * N(0, 1))
    timestep_shift: bool  # shift t towards noise by image size, as FLUX's sampler does (mu of calculate_shift)
    guidance: float  # the guidance embedding value fed while training (ignored by models without one)
    caption_dropout: float
    optimizer: str
    weight_decay: float
    lr_scheduler: str
    warmup_steps: int
    max_grad_norm: float
    save_dtype: str  # dtype of the saved adapter: bf16 (half the file) or fp32
    quantize: str  # how the frozen base transformer is stored while training, one of QUANTIZE_MODES
    val_every: int  # steps between validation losses (also taken at the end)
    val_images: int  # validation images in the validation loss (evenly spaced over the split)
    checkpoint_every: Annotated[int, OPERATIONAL]  # steps between resume checkpoints
    log_every: Annotated[int, OPERATIONAL]  # steps between host syncs of the loss and MLflow writes
    # Content-keyed VAE/text encodings shared by all experiments (relative to the repo root, outside DVC's outputs).
    cache_dir: Annotated[str, OPERATIONAL]
    cache_max_gb: Annotated[float, OPERATIONAL]  # least recently used entries beyond this are deleted

    @property
    def target_modules(self) -> tuple[str, ...]:
        return TARGET_PRESETS[self.targets]

    def __post_init__(self):
        self.positive("steps", "lr", "rank", "alpha", "batch_size", "grad_accum", "resolution",
                      "checkpoint_every", "log_every", "max_grad_norm", "logit_std", "sigmoid_scale", "val_every",
                      "val_images", "cache_max_gb")
        _check(self.resolution % 16 == 0, self.key("resolution"), "must be a multiple of 16", self.resolution)
        self.one_of("mixed_precision", ("no", "fp16", "bf16"))
        self.one_of("save_dtype", ("bf16", "fp32"))
        self.one_of("quantize", QUANTIZE_MODES)
        self.one_of("timestep_sampling", TIMESTEP_SCHEMES)
        self.one_of("targets", tuple(TARGET_PRESETS))
        self.one_of("optimizer", ("adamw", "adamw_fused", "adamw8bit"))
        self.one_of("lr_scheduler", ("constant", "linear", "cosine"))
        _check(bool(self.cache_dir.strip()), self.key("cache_dir"), "must not be empty", self.cache_dir)
        _check(0 <= self.caption_dropout < 1, self.key("caption_dropout"), "must be in [0, 1)", self.caption_dropout)
        self.non_negative("guidance", "weight_decay", "warmup_steps")


@dataclass(frozen=True)
class SampleConfig(Section):
    section: typing.ClassVar[str] = "sample"
    prompts: tuple[str, ...]  # user prompts, the trigger phrase is added as in training
    num_val_prompts: int  # held-out validation captions added to `prompts`
    seed: int
    steps: int
    guidance: float
    size: int

    def __post_init__(self):
        self.positive("steps", "size")
        self.non_negative("num_val_prompts", "guidance")
        _check(self.size % 16 == 0, self.key("size"), "must be a multiple of 16", self.size)
        _check(len(self.prompts) + self.num_val_prompts > 0, self.key("prompts"),
               "need at least one prompt or sample.num_val_prompts > 0", self.prompts)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    section: typing.ClassVar[str] = "evaluate"
    clip_model: str  # open_clip architecture name
    clip_pretrained: str  # open_clip pretrained tag or a local checkpoint path
    max_real_images: int  # held-out real icons used as CMMD / FID / KID reference
    # Local file of the FID Inception-v3 weights (weights-inception-2015-12-05-6726825d.pth, torch-fidelity's
    # release); never downloaded. Needed unless model.base is tiny (smoke run: random Inception).
    inception_weights: str
    fid_min_samples: int  # FID is refused (null + reason in eval.json) with fewer images in any set
    is_splits: int  # Inception Score splits (the protocol's 10)
    is_min_per_split: int  # IS is refused with fewer images per split (a split of n scores at most n)
    kid_subset_size: int  # KID subset size, capped at the smaller set's size
    kid_subsets: int  # KID random subset pairs (fixed seed); mean and std over them

    def __post_init__(self):
        self.positive("max_real_images", "is_splits", "kid_subsets")
        for name in ("fid_min_samples", "is_min_per_split", "kid_subset_size"):
            _check(getattr(self, name) >= 2, self.key(name), "must be >= 2", getattr(self, name))


@dataclass(frozen=True)
class EdaConfig(Section):
    """Stage eda: what the dataset looks like (README: Explore the data)."""
    section: typing.ClassVar[str] = "eda"
    seed: int  # which images the contact sheet and the colour statistics draw
    max_bins: int  # histograms: at most this many bins (of a round width: 1, 2, 2.5 or 5 x 10^k)
    top_n: int  # rows of the top words and top bigrams tables
    cloud_words: int  # words in the word cloud
    sheet_images: int  # random training images on the contact sheet
    sheet_tile: int  # pixels per contact sheet tile
    colour_images: int  # images measured for colour statistics (a seeded sample; 0 = all)

    def __post_init__(self):
        self.positive("max_bins", "top_n", "cloud_words", "sheet_images", "sheet_tile")
        self.non_negative("colour_images")
        _check(self.sheet_tile >= 16, self.key("sheet_tile"), "must be >= 16", self.sheet_tile)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a YAML value against a field's type, turning lists into tuples."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        _check(isinstance(value, list), key, "must be a list", value)
        (item, _) = typing.get_args(hint)
        return tuple(_coerce(v, item, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "must be a number", value)
        return float(value)
    if hint is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "must be an integer", value)
        return value
    if hint is bool:
        _check(isinstance(value, bool), key, "must be true or false", value)
        return value
    if hint is str:
        _check(isinstance(value, str), key, "must be a string", value)
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")


def build(cls: type, raw: Any):
    """Build a Section subclass from the dict under its params.yaml key."""
    name = cls.section
    _check(isinstance(raw, dict), name, "must be a mapping in params.yaml", raw)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    missing = [f for f in fields if f not in raw]
    if missing:
        raise ConfigError(f"{name}.{missing[0]}: missing from params.yaml")
    return cls(**{f: _coerce(raw[f], hints[f], f"{name}.{f}") for f in fields})


def parse_params(text: str) -> dict:
    """params.yaml's text read as YAML 1.2, like DVC reads and writes it: `dvc exp run -S
    train.mixed_precision=no` writes a bare `no`, which YAML 1.1 (PyYAML) would read as False."""
    return YAML(typ="safe", pure=True).load(text) or {}


def read_params(path: Path = PARAMS_FILE) -> dict:
    return parse_params(Path(path).read_text(encoding="utf-8"))


def _section(cls: type, path: Path) -> dict:
    params = read_params(path)
    if cls.section not in params:
        raise ConfigError(f"{cls.section}: section missing from {path}")
    return params[cls.section]


def load(cls: type, path: Path = PARAMS_FILE):
    """The whole section: the stage's results depend on every non-operational field (dvc.yaml)."""
    return build(cls, _section(cls, path))


def load_field(cls: type, name: str, path: Path = PARAMS_FILE):
    """One field of another stage's section, e.g. sample's caption.trigger, checked like load() checks it."""
    raw = _section(cls, path)
    key = f"{cls.section}.{name}"
    if not isinstance(raw, dict) or name not in raw:
        raise ConfigError(f"{key}: missing from {path}")
    return _coerce(raw[name], typing.get_type_hints(cls)[name], key)
