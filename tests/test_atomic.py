"""Atomic outputs: what a killed writer leaves behind is removed by the next write (or, for a cache of many
files, by the cache's sweep), a live one's is not."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from iconforge.atomic import atomic_dir

# Writes `dest` through atomic_dir, says "ready" once its temporary is full, waits for a line, finishes.
WRITER = """
import sys
from pathlib import Path
from iconforge.atomic import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "who").write_text(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
"""
# The same through atomic_file (one cache entry).
FILE_WRITER = """
import sys
from pathlib import Path
from iconforge.atomic import atomic_file
with atomic_file(Path(sys.argv[1])) as f:
    f.write(sys.argv[2])
    f.flush()
    print("ready", flush=True)
    sys.stdin.readline()
"""


def writer(dest: Path, who: str, code: str = WRITER) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", code, str(dest), who], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    assert p.stdout.readline() == "ready\n"
    return p


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_killed_writers_temporary_is_removed_and_a_live_ones_kept(tmp_path, capsys):
    dest = tmp_path / "png"
    live = writer(dest, "live")
    [live_tmp] = hidden(tmp_path)
    killed = writer(dest, "killed")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    [left] = [n for n in hidden(tmp_path) if n != live_tmp]
    assert left.startswith(".png.tmp-") and (tmp_path / left / "who").read_text() == "killed"

    with atomic_dir(dest) as tmp:
        (tmp / "who").write_text("me")
    assert (dest / "who").read_text() == "me"
    assert hidden(tmp_path) == [live_tmp]  # the killed one's is gone, the live one's is not touched
    assert f"note: removed {tmp_path / left}, left by a killed write" in capsys.readouterr().err

    live.communicate("\n", timeout=60)
    assert live.returncode == 0 and (dest / "who").read_text() == "live" and hidden(tmp_path) == []


def test_the_encoding_cache_sweeps_a_killed_writers_entry_and_keeps_a_live_ones(tmp_path):
    from iconforge.flux.latent_cache import EncodingCache

    folder = tmp_path / "cache" / "ab"
    folder.mkdir(parents=True)
    live = writer(folder / "ab1.safetensors", "live", FILE_WRITER)
    [live_tmp] = hidden(folder)
    killed = writer(folder / "ab2.safetensors", "killed", FILE_WRITER)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    [left] = [n for n in hidden(folder) if n != live_tmp]
    assert left.startswith(".ab2.safetensors.tmp-") and (folder / left).read_text() == "killed"

    EncodingCache(tmp_path / "cache", "scope", 64, max_bytes=1 << 30).evict(keep=set())
    assert hidden(folder) == [live_tmp]
    live.communicate("\n", timeout=60)
    assert live.returncode == 0 and (folder / "ab1.safetensors").read_text() == "live" and hidden(folder) == []
