"""Stage fetch: the dataset fetch.source names -> data/raw/, data/manifest.csv and data/source.json.

bioicons: the archive's static/icons/ tree; source.json holds the archive sha256, top folder and
the upstream commit the credits link to. parquet: one <shard>/<row>.img per row with image bytes;
the manifest has every row (shards.FIELDS); source.json names the source and each shard's sha256."""
import tempfile
from collections import Counter
from pathlib import Path

from iconforge import paths
from iconforge.atomic import atomic_dir, write_json
from iconforge.config import FetchConfig, load
from iconforge.dataset import archive, manifest, shards
from iconforge.errors import run_stage
from iconforge.tables import write_csv


def fetch_bioicons(cfg: FetchConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="iconforge-fetch-") as tmp:
        path = archive.locate(cfg.url, Path(tmp), cfg.timeout_s, cfg.retries)
        if cfg.sha256:
            archive.verify_sha256(path, cfg.sha256, label=cfg.url)
        with atomic_dir(paths.RAW) as out:
            got = archive.extract_icons(path, out, label=cfg.url)
            commit = archive.upstream_commit(got.top, cfg.revision, label=cfg.url)
            rows = manifest.build(out)
        sha256 = archive.sha256_of(path)
    write_csv(paths.MANIFEST, rows, manifest.FIELDS)
    # What the archive's bytes determine, not how fetch.url spells its location: moving the archive reruns nothing.
    write_json(paths.SOURCE, {"sha256": sha256, "top_folder": got.top, "commit": commit})
    per_license = Counter(r["license"] for r in rows)
    print(f"fetch: {len(rows)} SVGs of commit {commit[:12]} in {paths.RAW} ("
          + ", ".join(f"{lic or '(none)'} {n}" for lic, n in sorted(per_license.items()))
          + f"); {len(got.skipped)} other archive files skipped; manifest {paths.MANIFEST}")


def fetch_parquet(cfg: FetchConfig) -> None:
    names = [shards.shard_name(u) for u in cfg.shards]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise shards.ShardError(f"fetch.shards: two shards would share the folder {twice[0]!r}: rename one")
    rows, recorded = [], []
    cache = paths.repo_root() / paths.SHARD_CACHE
    with atomic_dir(paths.RAW) as out:  # a refused shard leaves nothing in data/raw
        for url, sha, name in zip(cfg.shards, cfg.shards_sha256 or [""] * len(cfg.shards), names):
            path = shards.get(url, sha, cache, cfg.timeout_s, cfg.retries)
            pf = shards.open_checked(path, url, cfg.image_column, cfg.text_column)
            got = shards.extract(pf, url, name, out, cfg.image_column, cfg.text_column)
            rows += got
            recorded.append({"name": name, "rows": len(got), "sha256": archive.sha256_of(path)})
    write_csv(paths.MANIFEST, rows, shards.FIELDS)
    write_json(paths.SOURCE, shards.source_record(recorded))
    print(f"fetch: {len(rows)} rows of {len(recorded)} shard(s) in {paths.RAW}, "
          f"{sum(r['bytes'] == 0 for r in rows)} without image bytes; manifest {paths.MANIFEST}")


def main() -> None:
    cfg = load(FetchConfig)
    (fetch_parquet if cfg.source == "parquet" else fetch_bioicons)(cfg)


if __name__ == "__main__":
    run_stage("fetch", main)
