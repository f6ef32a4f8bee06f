"""Stage fetch: the bioicons archive -> data/raw/ (its static/icons/), data/manifest.csv and
data/source.json (archive sha256, top folder and the upstream commit the credits link to)."""
import tempfile
from collections import Counter
from pathlib import Path

from iconforge import paths
from iconforge.atomic import atomic_dir, write_json
from iconforge.config import FetchConfig, load
from iconforge.dataset import archive, manifest
from iconforge.errors import run_stage
from iconforge.tables import write_csv


def main() -> None:
    cfg = load(FetchConfig)
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


if __name__ == "__main__":
    run_stage("fetch", main)
