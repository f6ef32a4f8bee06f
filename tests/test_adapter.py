"""The saved adapter applies the trained weight delta `alpha / rank * B @ A` in every loader users
draw with: diffusers (its real loader), ComfyUI and Forge (their rules, stated below from their
published source), and kohya's format read back by diffusers' own converter."""
from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline
from safetensors.torch import load_file

from iconforge.config import ModelConfig
from iconforge.flux.lora_io import add_lora, save_adapter, to_kohya
from iconforge.flux.models import load_pipeline, resolve_base
from iconforge.paths import ADAPTER_FILE, KOHYA_FILE

# Attention of both streams, the single blocks' MLP input, and the output projections: every
# kohya layer kind, fused ones (qkv, linear1) included.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "proj_out")
RANK_ALPHA = [(16, 16), (32, 16), (4, 8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    resolve_base(ModelConfig(base="tiny", revision=""), root)
    return root


def trained_adapter(base, rank: int, alpha: float) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny transformer with an adapter whose B is non-zero (as after training), and its deltas."""
    t = load_pipeline(base).transformer
    add_lora(t, rank=rank, alpha=alpha, target_modules=TARGETS, seed=0)
    g = torch.Generator().manual_seed(rank)
    deltas = {}
    with torch.no_grad():
        for name, m in t.named_modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.copy_(torch.randn(m.lora_B["default"].weight.shape, generator=g))
                deltas[name] = m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight
    return t, deltas


def comfy_delta(sd: dict[str, torch.Tensor], key: str, strength: float = 1.0) -> torch.Tensor:
    """ComfyUI's rule (comfyanonymous/ComfyUI: comfy/lora.py `load_lora` reads alpha only from the
    `<key>.alpha` tensor, never from safetensors metadata; comfy/weight_adapter/lora.py
    `LoRAAdapter.calculate_weight` adds strength * (alpha / rank) * up @ down with rank =
    down.shape[0], and scale 1.0 when there is no alpha). Forge applies the same rule
    (lllyasviel/stable-diffusion-webui-forge: backend/patcher/lora.py `merge_lora_to_weight`, with
    `load_lora` from packages_3rdparty/comfyui_lora_collection/lora.py). bench/check_loaders.py
    runs ComfyUI's own code on a real checkout."""
    up, down = sd[f"{key}.up"], sd[f"{key}.down"]
    alpha = sd.get(f"{key}.alpha")
    scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
    return strength * scale * up.float() @ down.float()


def comfy_view(path) -> dict[str, torch.Tensor]:
    """A file's tensors under `<key>.up/.down/.alpha`, for both key styles ComfyUI reads."""
    out = {}
    for k, v in load_file(path).items():
        for a, b in ((".lora_B.weight", ".up"), (".lora_A.weight", ".down"), (".lora_up.weight", ".up"),
                     (".lora_down.weight", ".down"), (".alpha", ".alpha")):
            if k.endswith(a):
                out[k[:-len(a)] + b] = v
    return out


@pytest.mark.parametrize("rank,alpha", RANK_ALPHA)
def test_every_loader_applies_the_trained_delta(base, tmp_path, rank, alpha):
    t, trained = trained_adapter(base, rank, alpha)
    save_adapter(t, tmp_path / ADAPTER_FILE, tmp_path / KOHYA_FILE)

    # diffusers: its own loader into the saved base, then peft's scaling and weights.
    pipe = load_pipeline(base)
    pipe.load_lora_weights(tmp_path, weight_name=ADAPTER_FILE, adapter_name="x")
    loaded = {name: m.scaling["x"] * m.lora_B["x"].weight @ m.lora_A["x"].weight
              for name, m in pipe.transformer.named_modules() if hasattr(m, "lora_B") and "x" in m.lora_B}
    assert set(loaded) == set(trained)
    for name, d in trained.items():
        torch.testing.assert_close(loaded[name], d, rtol=1e-5, atol=1e-6)

    # ComfyUI / Forge on the diffusers file: no alpha tensor, so scale 1.0; alpha/rank is folded in.
    sd = comfy_view(tmp_path / ADAPTER_FILE)
    for name, d in trained.items():
        torch.testing.assert_close(comfy_delta(sd, f"transformer.{name}"), d, rtol=1e-5, atol=1e-6)

    # ComfyUI / Forge on the kohya file: fused layers, alpha / (fused rank) = 1, rows in part order.
    kohya = comfy_view(tmp_path / KOHYA_FILE)
    for i in range(len(t.transformer_blocks)):
        qkv = comfy_delta(kohya, f"lora_unet_double_blocks_{i}_img_attn_qkv")
        for part, chunk in zip(("to_q", "to_k", "to_v"), qkv.chunk(3)):
            torch.testing.assert_close(chunk, trained[f"transformer_blocks.{i}.attn.{part}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(comfy_delta(kohya, f"lora_unet_double_blocks_{i}_txt_attn_proj"),
                                   trained[f"transformer_blocks.{i}.attn.to_add_out"], rtol=1e-5, atol=1e-6)
    for i, block in enumerate(t.single_transformer_blocks):
        linear1 = comfy_delta(kohya, f"lora_unet_single_blocks_{i}_linear1")
        inner = block.attn.to_q.base_layer.out_features
        q, k, v, mlp = linear1.split([inner, inner, inner, block.proj_mlp.out_features])
        torch.testing.assert_close(k, trained[f"single_transformer_blocks.{i}.attn.to_k"], rtol=1e-5, atol=1e-6)
        assert not mlp.any()  # proj_mlp was not trained: zero rows

    # The check can fail: the old file (lora_B as trained, alpha only in metadata) under ComfyUI's rule.
    if alpha != rank:
        name, m = next((n, t.get_submodule(n)) for n in trained)
        unfolded = {"k.up": m.lora_B["default"].weight, "k.down": m.lora_A["default"].weight}
        assert not torch.allclose(comfy_delta(unfolded, "k"), trained[name])


def test_same_weights_give_the_same_bytes(base, tmp_path):
    for d in ("a", "b"):
        t, _ = trained_adapter(base, 4, 8)
        save_adapter(t, tmp_path / d / ADAPTER_FILE, tmp_path / d / KOHYA_FILE, torch.bfloat16)
    for f in (ADAPTER_FILE, KOHYA_FILE):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert {v.dtype for v in load_file(tmp_path / "a" / ADAPTER_FILE).values()} == {torch.bfloat16}


# FLUX.1-dev's widths: diffusers' kohya converter is written for them (19 + 38 blocks, 3072 wide).
INNER, MLP = 3072, 12288
DEV_WIDTHS = {**{f"transformer_blocks.{i}.attn.{m}": INNER for i in range(19)
                 for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")},
              **{f"single_transformer_blocks.{i}.{m}": w for i in range(38)
                 for m, w in (("attn.to_q", INNER), ("attn.to_k", INNER), ("attn.to_v", INNER), ("proj_mlp", MLP),
                              ("proj_out", INNER))}}


@pytest.mark.parametrize("modules", [
    ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),  # the default target set
    ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
     "attn.add_v_proj", "attn.to_add_out", "proj_mlp", "proj_out"),  # attention + text stream + MLP input
])
def test_kohya_export_reads_back_through_diffusers(tmp_path, modules):
    """A FLUX.1-dev-shaped folded adapter (blocks 0 and last of each kind) -> kohya file ->
    FluxPipeline.lora_state_dict gives the same B @ A for every trained module, zero for the rest."""
    g = torch.Generator().manual_seed(0)
    rank, state = 4, {}
    for prefix, blocks in (("transformer_blocks", (0, 18)), ("single_transformer_blocks", (0, 37))):
        for i in blocks:
            for m in modules:
                name = f"{prefix}.{i}.{m}"
                if name in DEV_WIDTHS:
                    state[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, INNER, generator=g)
                    state[f"transformer.{name}.lora_B.weight"] = torch.randn(DEV_WIDTHS[name], rank, generator=g)
    path = tmp_path / KOHYA_FILE
    from safetensors.torch import save_file
    save_file(to_kohya(state, DEV_WIDTHS), path)

    back = FluxPipeline.lora_state_dict(path)
    delta = lambda sd, n: sd[f"{n}.lora_B.weight"].double() @ sd[f"{n}.lora_A.weight"].double()  # noqa: E731
    trained = {k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight")}
    for n in trained:
        torch.testing.assert_close(delta(back, n), delta(state, n))
    for n in {k.rsplit(".lora_", 1)[0] for k in back} - trained:  # untrained parts of a fused layer
        assert not delta(back, n).any(), n


def _card(dataset, by_license: dict, prompt: str) -> "ModelCard":
    from huggingface_hub import ModelCard

    from conftest import committed_params
    from iconforge.config import TrainConfig, build
    from iconforge.flux.card import render

    params = committed_params()
    model = ModelConfig(base="black-forest-labs/FLUX.1-dev", revision=params["model"]["revision"])
    scores = {"clip_score": 31.0, "cmmd": 0.5, "white_background_ratio": 0.7, "palette_size": 9.0}
    train = sum(c["train"] for c in by_license.values())
    return ModelCard(render(
        model, build(TrainConfig, params["train"]), prompt.split(",")[0], dataset,
        {"run_id": "abc123", "experiment": "iconforge", "dvc_exp_name": "rank32", "git_commit": "f00"},
        {"steps": 1000, "effective_batch_size": 1, "train_images": train, "skipped_images": 0,
         "trainable_params": 18_700_000, "final_loss": 0.31, "seconds_per_step": 1.7},
        {"lora": {**scores, "fid": None, "kid": 0.0123, "inception_score": None},
         "base": {**scores, "fid": None, "kid": 0.0456, "inception_score": None},
         "inception": {"weights": "/w.pth", "standard_weights": True, "count": {"lora": 8, "real": 200},
                       "refused": {"fid": "FID needs >= 2048 images per set", "kid": None,
                                   "inception_score": "Inception Score needs >= 50 images per split"}}},
        {"dataset": {"images": train + 200, "by_split": {"train": train, "validation": 200}, "by_license": by_license}},
        {"steps": 28, "guidance": 3.5, "samples": [{"prompt": prompt}]}))


def test_model_card_names_base_license_trigger_and_credits():
    from iconforge.flux.card import describe_dataset

    icons = describe_dataset(False,
                             "https://huggingface.co/datasets/iamkaikai/amazing_logos_v4")  # not read for icons
    card = _card(icons, {"cc-by-4.0": {"train": 1500, "validation": 150}, "cc-0": {"train": 500, "validation": 50}},
                 "bioicons style, zebrafish embryo")
    meta = card.data.to_dict()
    assert meta["base_model"] == "black-forest-labs/FLUX.1-dev" and meta["license_name"] == "flux-1-dev-non-commercial-license"
    assert meta["instance_prompt"] == "bioicons style" and meta["widget"][0]["text"] == "bioicons style, zebrafish embryo"
    assert "datasets" not in meta and "[bioicons](https://bioicons.com)" in card.text
    assert "Trained on 2000 icons of bioicons. 1500 of them require attribution (cc-by-4.0: 1500)" in card.text
    assert "rasterized from SVG" in card.text and "logo" not in card.text.lower()
    assert "`ATTRIBUTION.md`" in card.text and "num_inference_steps=28, guidance_scale=3.5" in card.text
    assert "rank32" in card.text and "abc123" in card.text and "`f00`" in card.text
    assert "seconds_per_step" not in card.text and "1.7" not in card.text  # no timings: same inputs, same bytes
    assert "Test build" not in card.text
    assert "On the FID Inception-v3 (the published weights), 8 samples per model against 200 held-out" in card.text
    assert "| FID (lower is closer) | not reported: FID needs >= 2048 images per set |" in card.text
    assert "| KID (lower is closer) | LoRA 0.0123 / base 0.0456 |" in card.text


def test_model_card_of_a_logo_run_names_the_parquet_dataset():
    from iconforge.flux.card import describe_dataset

    url = "https://huggingface.co/datasets/iamkaikai/amazing_logos_v4"
    logos = describe_dataset(True, url)
    card = _card(logos, {"unspecified": {"train": 1800, "validation": 200}}, "elegant logo, coffee shop")
    assert card.data.to_dict()["datasets"] == ["iamkaikai/amazing_logos_v4"]
    assert f"in the style of the images of [iamkaikai/amazing_logos_v4]({url})" in card.text
    assert f"Trained on 1800 images of [iamkaikai/amazing_logos_v4]({url}). 1800 of them require attribution " \
           "(unspecified: 1800)" in card.text
    assert "decoded, flattened onto white" in card.text
    assert "bioicons" not in card.text and "rasterized from SVG" not in card.text and "icons" not in card.text
