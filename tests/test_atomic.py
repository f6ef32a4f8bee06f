"""Atomic outputs: what a killed writer leaves behind is removed by the next write, a live one's is not."""
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


def writer(dest: Path, who: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), who], stdin=subprocess.PIPE,
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
