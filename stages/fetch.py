"""Stage fetch: the bioicons archive -> data/raw/ (its static/icons/) + data/manifest.csv."""
import tempfile
from collections import Counter
from pathlib import Path

from iconforge import archive, manifest
from iconforge.atomic import atomic_dir
from iconforge.config import FetchConfig, load
from iconforge.tables import write_csv
from iconforge.errors import run_stage

RAW = Path("data/raw")
MANIFEST = Path("data/manifest.csv")


def main() -> None:
    cfg = load(FetchConfig)
    with tempfile.TemporaryDirectory(prefix="iconforge-fetch-") as tmp:
        path = archive.locate(cfg.url, Path(tmp), cfg.timeout_s, cfg.retries)
        if cfg.sha256:
            archive.verify_sha256(path, cfg.sha256, label=cfg.url)
        with atomic_dir(RAW) as out:
            skipped = archive.extract_icons(path, out, label=cfg.url)
            rows = manifest.build(out)
    write_csv(MANIFEST, rows, manifest.FIELDS)
    per_license = Counter(r["license"] for r in rows)
    print(f"fetch: {len(rows)} SVGs in {RAW} ("
          + ", ".join(f"{lic or '(none)'} {n}" for lic, n in sorted(per_license.items()))
          + f"); {len(skipped)} other archive files skipped; manifest {MANIFEST}")


if __name__ == "__main__":
    run_stage("fetch", main)
