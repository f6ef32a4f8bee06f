"""Stage evaluate: CLIP score, CMMD, style gaps, latent MMD, FID, KID and Inception Score of samples/
-> metrics/eval.json, metrics/eval_per_prompt.csv."""
from iconforge import paths
from iconforge.config import EvaluateConfig, load
from iconforge.errors import run_stage
from iconforge.tables import require


def _flat(d: dict, prefix: str = "eval") -> dict[str, float]:
    """Numeric leaves as MLflow metric names: eval.lora.clip_score, eval.gap.base.palette_size, ..."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}.{k}"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}.{k}"] = float(v)
    return out


def _inception_text(summary: dict) -> str:
    """`lora/base FID 12.34 / 15.10, KID 0.0123 / 0.0151, IS refused`: "refused" where eval.json has null."""
    def pair(key: str, fmt: str) -> str:
        values = [summary[kind][key] for kind in ("lora", "base")]
        return "refused" if None in values else " / ".join(format(v, fmt) for v in values)

    return (f"lora/base FID {pair('fid', '.2f')}, KID {pair('kid', '.4f')}, IS {pair('inception_score', '.4f')}"
            + (" (random Inception)" if summary["smoke"] else ""))


def main() -> None:
    cfg = load(EvaluateConfig)
    require(paths.SAMPLES_INDEX, paths.RUN_JSON)
    # Imported only now, so a params typo or a missing input is reported at once, not after ~15 s of
    # torch/open_clip/mlflow imports.
    import torch

    from iconforge.atomic import write_json
    from iconforge.evaluate.inception import (STANDARD_SHA256_PREFIX, WEIGHTS_FILE, Limits, inception_metrics,
                                              load_inception)
    from iconforge.evaluate.latent_mmd import latent_distances, load_vae, ratio_text
    from iconforge.evaluate.metrics import (CMMD_SCALE, CMMD_SIGMA, SMOKE_NOTE, evaluate, load_clip,
                                            load_real_images, sample_images)
    from iconforge.evaluate.sampling import read_index
    from iconforge.evaluate.style import METRICS
    from iconforge.flux.models import TINY, read_base
    from iconforge.tables import write_csv
    from iconforge.tracking import check_run_store, read_run_json, resume_run

    index = read_index(paths.SAMPLES_INDEX)
    run = read_run_json(paths.RUN_JSON)
    check_run_store(run)
    smoke = read_base(paths.BASE)["kind"] == TINY  # random FLUX: pretrained CLIP would add nothing but a download
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clip = load_clip(cfg.clip_model, None if smoke else cfg.clip_pretrained, device)  # fail fast, before any work
    # Optional: with no weights file configured, FID/KID/IS are recorded as not computed and why.
    inception = (load_inception(None if smoke else cfg.inception_weights, device)
                 if smoke or cfg.inception_weights.strip() else None)
    if inception and not smoke and not inception.standard:
        print(f"evaluate: {cfg.inception_weights} is not the published FID Inception weights ({WEIGHTS_FILE}, "
              f"sha256 {STANDARD_SHA256_PREFIX}...; this one {inception.sha256[:8]}...): FID, KID and IS will not "
              f"compare with published numbers")
    real = load_real_images(paths.VALIDATION_SPLIT, cfg.max_real_images)
    summary, rows = evaluate(paths.SAMPLES, index, real, clip)
    generated = {kind: sample_images(paths.SAMPLES, index, kind) for kind in ("lora", "base")}
    latent = latent_distances(load_vae(paths.BASE, device), generated["lora"], generated["base"], real,
                              index["size"])
    scores, inception_info = inception_metrics(inception, generated, real, index["size"], Limits(
        cfg.fid_min_samples, cfg.is_splits, cfg.is_min_per_split, cfg.kid_subset_size, cfg.kid_subsets))
    for kind, s in scores.items():
        summary[kind].update(s)
    summary.update(smoke=smoke, clip_model=cfg.clip_model,
                   clip_pretrained="random-init" if smoke else cfg.clip_pretrained,
                   cmmd_sigma=CMMD_SIGMA, cmmd_scale=CMMD_SCALE, latent_mmd=latent, inception=inception_info)
    if smoke:
        summary["note"] = SMOKE_NOTE
    write_json(paths.EVAL_METRICS, summary)
    write_csv(paths.EVAL_PER_PROMPT, rows, ["prompt", "kind", "seed", "clip_score", *METRICS])
    with resume_run(run, "evaluate") as tracker:  # the metrics files are written whatever the store does
        tracker.log_metrics([(0, _flat({k: summary[k] for k in ("lora", "base", "real", "gap", "latent_mmd")}))])
        tracker.log_artifact(paths.EVAL_METRICS, "metrics")
        tracker.log_artifact(paths.EVAL_PER_PROMPT, "metrics")
    for name, why in inception_info["refused"].items():
        if why:
            print(f"evaluate: {name} not reported: {why}")
    print(f"evaluate: CLIP score lora {summary['lora']['clip_score']:.2f} / base {summary['base']['clip_score']:.2f}, "
          f"CMMD lora {summary['lora']['cmmd']:.3f} / base {summary['base']['cmmd']:.3f}"
          + (" (smoke run: random CLIP, no meaning)" if smoke else "")
          + f"; latent MMD^2 lora/base: to held-out images {ratio_text(latent['icons']['ratio'])}, "
          f"to control shapes {ratio_text(latent['control']['ratio'])}; {_inception_text(summary)}"
          f" -> {paths.EVAL_METRICS}")


if __name__ == "__main__":
    run_stage("evaluate", main)
