"""fetch stage: download/locate, safe extraction, manifest. Archives are built here in tmp dirs."""
import csv
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SAMPLE_ARCHIVE, committed_params, needs_sample
from iconforge.dataset import archive
from stages import fetch

COMMIT = "0123abcd" * 5  # the upstream commit a GitHub source archive names in its top folder
TOP = f"bioicons-{COMMIT}"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><rect width="5" height="5"/></svg>'
# static/icons/ paths -> content; plus files the stage must skip.
ICONS = {
    "authors.json": b'{"Jane Doe": "https://example.org"}',
    "categories.json": b'["Lab_apparatus", "Animals"]',
    "icons.json": b"[]",
    "cc-0/LICENSE": b"CC0",
    "cc-0/Lab_apparatus/Jane-Doe/flask.svg": SVG,
    "cc-by-4.0/LICENSE": b"CC BY 4.0",
    "cc-by-4.0/Animals/Servier/mouse- (2).svg": SVG + b"<!-- 2 -->",
    "cc-by-4.0/Animals/Servier/Mäus,e.svg": SVG + b"<!-- 3 -->",
    "cc-by-4.0/General_items/no-author.svg": SVG + b"<!-- 4 -->",
}
SKIPPED = {"README.md": b"readme", "static/icons/index.py": b"print()", "docs/icon.svg": SVG}


def add(tar, name, data=b"", type_=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type_, linkname, 0o644, 1_700_000_000
    info.size = len(data) if type_ == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def make_archive(path, extra=(), extra_first=False, top=TOP):
    """A GitHub-like source archive: one top folder with static/icons/ inside, plus `extra` entries."""
    with tarfile.open(path, "w:gz") as tar:
        for e in extra if extra_first else ():
            add(tar, *e)
        add(tar, top, type_=tarfile.DIRTYPE)
        for rel, data in [*SKIPPED.items(), *((f"static/icons/{k}", v) for k, v in ICONS.items())]:
            add(tar, f"{top}/{rel}", data)
        for e in () if extra_first else extra:
            add(tar, *e)
    return path


def write_params(repo: Path, **fetch_params) -> None:
    """params.yaml in `repo`: the committed fetch section with `fetch_params` replaced."""
    repo.mkdir(parents=True, exist_ok=True)
    section = dict(committed_params()["fetch"], timeout_s=5, **fetch_params)
    (repo / "params.yaml").write_text(yaml.safe_dump({"fetch": section}))


def run_stage(repo, url, sha256="", retries=1, revision=""):
    """Run the real stage module in `repo` (its cwd) with a params.yaml naming `url`."""
    write_params(repo, url=url, sha256=sha256, revision=revision, retries=retries)
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        fetch.main()
    finally:
        os.chdir(cwd)
    with open(repo / "data/manifest.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def assert_fetched(repo, rows):
    raw = repo / "data/raw"
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
    assert files == sorted(ICONS)  # top folder stripped, only static/icons data kept
    assert [r["path"] for r in rows] == sorted(k for k in ICONS if k.endswith(".svg"))
    by_path = {r["path"]: r for r in rows}
    mouse = by_path["cc-by-4.0/Animals/Servier/mouse- (2).svg"]
    data = ICONS[mouse["path"]]
    assert mouse == {"path": mouse["path"], "license": "cc-by-4.0", "category": "Animals", "author": "Servier",
                     "name": "mouse- (2)", "bytes": str(len(data)), "sha256": hashlib.sha256(data).hexdigest()}
    assert by_path["cc-by-4.0/General_items/no-author.svg"]["author"] == ""
    assert not list((repo / "data").glob(".*"))  # no temporary leftovers


def test_happy_path_and_byte_identical_rerun(tmp_path):
    src = make_archive(tmp_path / "src.tar.gz")
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    repo = tmp_path / "repo"
    rows = run_stage(repo, str(src), sha256=sha)
    assert_fetched(repo, rows)
    first = (repo / "data/manifest.csv").read_bytes()
    assert first.startswith(b"path,license,category,author,name,bytes,sha256\n") and b"\r" not in first
    (repo / "data/raw/stale.svg").write_bytes(SVG)  # a rerun replaces data/raw whole
    run_stage(repo, str(src), sha256=sha)
    assert (repo / "data/manifest.csv").read_bytes() == first
    assert not (repo / "data/raw/stale.svg").exists()


def test_relative_path_and_file_url(tmp_path):
    (tmp_path / "shared").mkdir()
    src = make_archive(tmp_path / "shared/src.tar.gz")
    rel_repo, url_repo = tmp_path / "rel", tmp_path / "url"
    assert_fetched(rel_repo, run_stage(rel_repo, "../shared/src.tar.gz"))
    assert_fetched(url_repo, run_stage(url_repo, src.as_uri()))
    assert (rel_repo / "data/manifest.csv").read_bytes() == (url_repo / "data/manifest.csv").read_bytes()


def test_relative_path_is_relative_to_the_original_repo_in_an_experiment_copy(tmp_path, monkeypatch):
    # A queued `dvc exp run` runs the stage in <repo>/.dvc/tmp/exps/tmpXXXX with DVC_ROOT=<repo>.
    (tmp_path / "shared").mkdir()
    make_archive(tmp_path / "shared/src.tar.gz")
    repo = tmp_path / "repo"
    copy = repo / ".dvc/tmp/exps/tmp1234"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert_fetched(copy, run_stage(copy, "../shared/src.tar.gz"))
    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(archive.ArchiveError, match=r"\.\./shared/src\.tar\.gz: archive file not found \(looked for "):
        run_stage(copy, "../shared/src.tar.gz")


def test_missing_file_and_bad_scheme(tmp_path):
    with pytest.raises(archive.ArchiveError, match="nope.tar.gz: archive file not found"):
        archive.locate(str(tmp_path / "nope.tar.gz"), tmp_path, 5, 0)
    with pytest.raises(archive.ArchiveError, match="unsupported URL scheme 'ftp'"):
        archive.locate("ftp://example.org/a.tar.gz", tmp_path, 5, 0)


def test_sha256_mismatch_refused_before_extraction(tmp_path):
    src = make_archive(tmp_path / "src.tar.gz")
    actual = hashlib.sha256(src.read_bytes()).hexdigest()
    repo = tmp_path / "repo"
    with pytest.raises(archive.ArchiveError) as e:
        run_stage(repo, str(src), sha256="ab" * 32)
    assert str(src) in str(e.value) and "ab" * 32 in str(e.value) and actual in str(e.value)
    assert not (repo / "data").exists()


ICON_DIR = f"{TOP}/static/icons/cc-0/Lab_apparatus/Jane-Doe"
HOSTILE = {  # case -> (entry for add(), the reason the error must give)
    "dotdot": ((f"{TOP}/static/icons/../../../escaped.svg", SVG), r"contains '\.\.'"),
    "absolute": (("/tmp/iconforge-test-escaped.svg", SVG), "absolute path"),
    "symlink": ((f"{ICON_DIR}/link.svg", b"", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink": ((f"{ICON_DIR}/hard.svg", b"", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    "chardev": ((f"{ICON_DIR}/dev.svg", b"", tarfile.CHRTYPE), "device file"),
    "blockdev": ((f"{ICON_DIR}/blk.svg", b"", tarfile.BLKTYPE), "device file"),
    "fifo": ((f"{ICON_DIR}/fifo.svg", b"", tarfile.FIFOTYPE), "fifo"),
    "two_tops": (("other-top/static/icons/cc-0/a/b/x.svg", SVG), "more than one top folder"),
    "top_file": (("loose.svg", SVG), "top folder"),
    "duplicate": ((f"{ICON_DIR}/flask.svg", b"<svg/>"), "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("extra_first", [False, True], ids=["last", "first"])
def test_hostile_archive_refused(tmp_path, case, extra_first):
    entry, reason = HOSTILE[case]
    src = make_archive(tmp_path / "src.tar.gz", [entry], extra_first)
    repo = tmp_path / "repo"
    with pytest.raises(archive.ArchiveError, match=reason) as e:
        run_stage(repo, str(src))
    assert str(src) in str(e.value) and "refused" in str(e.value)
    assert not (repo / "data/raw").exists() and not list((repo / "data").glob(".*"))
    assert not list(tmp_path.rglob("escaped.svg")) and not os.path.exists("/tmp/iconforge-test-escaped.svg")


def test_html_page_as_archive(tmp_path):
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    with pytest.raises(archive.ArchiveError, match=r"src\.tar\.gz: not a gzip archive.*DOCTYPE"):
        run_stage(tmp_path / "repo", str(src))
    assert not (tmp_path / "repo/data/raw").exists()


def test_truncated_gzip(tmp_path):
    big = {f"{TOP}/static/icons/cc-0/c/a/{i}.svg": os.urandom(20_000) for i in range(8)}
    src = tmp_path / "full.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        for name, data in big.items():
            add(tar, name, data)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(archive.ArchiveError, match=r"cut\.tar\.gz: corrupt or truncated archive"):
        run_stage(tmp_path / "repo", str(cut))
    assert not (tmp_path / "repo/data/raw").exists()


def test_no_icons_folder(tmp_path):
    src = tmp_path / "src.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        add(tar, f"{TOP}/README.md", b"hi")
    with pytest.raises(archive.ArchiveError, match="no SVG files under static/icons/"):
        archive.extract_icons(src, tmp_path / "out")


def test_bomb_limits(tmp_path, monkeypatch):
    src = make_archive(tmp_path / "src.tar.gz")
    monkeypatch.setattr(archive, "MAX_ENTRIES", 5)
    with pytest.raises(archive.ArchiveError, match="past the limit of 5 entries"):
        archive.extract_icons(src, tmp_path / "a")
    monkeypatch.setattr(archive, "MAX_ENTRIES", 100)
    monkeypatch.setattr(archive, "MAX_BYTES", 4096)  # smaller than the tar stream (512-byte blocks)
    with pytest.raises(archive.ArchiveError, match="unpacks to more than 4096 bytes"):
        archive.extract_icons(src, tmp_path / "b")


class Server(http.server.ThreadingHTTPServer):
    """Serves `payload` at any path; answers the queued `statuses` first, one per request
    ("short": a 200 whose body stops halfway, as a dropped connection does)."""

    def __init__(self, payload: bytes, statuses: list):
        self.payload, self.statuses, self.requests = payload, statuses, 0
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests += 1
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        body = self.server.payload if status in (200, "short") else b"<html>error</html>"
        self.send_response(200 if status == "short" else status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if status == "short" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(payload: bytes, statuses: list) -> tuple[Server, str]:
        server = Server(payload, statuses)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/archive/{TOP}.tar.gz"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.mark.parametrize("failure", [500, "short"])
def test_http_download_retries(tmp_path, serve, failure):
    payload = make_archive(tmp_path / "src.tar.gz").read_bytes()
    server, url = serve(payload, [failure])
    repo = tmp_path / "repo"
    rows = run_stage(repo, url, sha256=hashlib.sha256(payload).hexdigest(), retries=1)
    assert server.requests == 2
    assert_fetched(repo, rows)


def test_http_errors(tmp_path, serve):
    server, url = serve(b"", [404])
    with pytest.raises(archive.ArchiveError, match=r"download failed after 1 attempt\(s\).*404"):
        run_stage(tmp_path / "a", url, retries=3)  # 404 is final: no retry
    assert server.requests == 1
    server, url = serve(b"", [503, 503])
    with pytest.raises(archive.ArchiveError, match=r"download failed after 2 attempt\(s\).*503"):
        run_stage(tmp_path / "b", url, retries=1)
    assert server.requests == 2 and not (tmp_path / "b/data/raw").exists()
    server, url = serve(b"<!DOCTYPE html><html>Sign in</html>", [])  # a 200 that is no archive
    with pytest.raises(archive.ArchiveError, match=rf"{url}: not a gzip archive"):
        run_stage(tmp_path / "c", url)


def test_stage_subprocess_exits_cleanly_on_hostile_archive(tmp_path):
    src = make_archive(tmp_path / "evil.tar.gz", [(f"{TOP}/static/icons/../../escaped.svg", SVG)])
    write_params(tmp_path, url="evil.tar.gz", sha256="", revision="", retries=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "evil.tar.gz" in p.stderr and "path traversal" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "data/raw").exists() and not list(tmp_path.rglob("escaped.svg"))
    assert src.exists()


@needs_sample
def test_sample_snapshot(tmp_path):
    repo = tmp_path / "repo"
    rows = run_stage(repo, str(SAMPLE_ARCHIVE), sha256="2e4efc52af36091c9cbdd235b8979ad4324e884ca028db0fac23b0fcfa0782bd",
                     revision="f3f18b8617323229444e55b138c5f3abc432beae")  # its top folder names no commit
    assert len(rows) == 212
    assert Counter(r["license"] for r in rows) == {"cc-0": 74, "cc-by-4.0": 68, "cc-by-3.0": 51, "cc-by-sa-4.0": 11, "mit": 6, "bsd": 2}
    raw = repo / "data/raw"
    assert (raw / "authors.json").is_file() and (raw / "cc-by-3.0/LICENSE").is_file()
    # Upstream keeps one icon without an author folder; it stays listed, author "".
    assert [r["path"] for r in rows if not r["author"]] == ["cc-by-4.0/General_items/scientific-article.svg"]
    r = rows[0]
    assert hashlib.sha256((raw / r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_source_json_records_the_commit_the_top_folder_names(tmp_path):
    src = make_archive(tmp_path / "a.tar.gz")
    run_stage(tmp_path / "repo", str(src))
    source = json.loads((tmp_path / "repo/data/source.json").read_text())
    assert source == {"sha256": hashlib.sha256(src.read_bytes()).hexdigest(), "top_folder": TOP,
                      "commit": COMMIT}


def test_commit_from_params_when_the_top_folder_names_none(tmp_path):
    src = make_archive(tmp_path / "a.tar.gz", top="icons-snapshot")
    with pytest.raises(archive.ArchiveError, match=r"top folder 'icons-snapshot' names no commit; set fetch.revision"):
        run_stage(tmp_path / "no", str(src))
    assert not (tmp_path / "no/data/raw").exists()
    run_stage(tmp_path / "yes", str(src), revision="ab" * 20)
    assert json.loads((tmp_path / "yes/data/source.json").read_text())["commit"] == "ab" * 20


def test_revision_that_contradicts_the_archive_is_refused(tmp_path):
    src = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(archive.ArchiveError, match=rf"names commit {COMMIT}, but fetch.revision is '{'ab' * 20}'"):
        run_stage(tmp_path / "repo", str(src), revision="ab" * 20)
