"""Atomic writes name their writer; the leftovers of killed writers are removed, live ones kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfads.infra import io
from lfads.infra.io import (
    STALE_AFTER_S,
    atomic_path,
    host_name,
    is_stale_temporary,
    remove_stale_temporaries,
)


def test_the_temporary_file_names_this_host_and_process_and_keeps_the_suffix(tmp_path):
    final = tmp_path / "run" / "inferred.h5"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.suffix == ".h5" and not tmp.exists()
        match = io.TEMPORARY_NAME.match(tmp.name)
        assert match and match["stem"] == "inferred"
        assert (match["host"], int(match["pid"])) == (host_name(), os.getpid())
        tmp.write_text("done")
        assert not final.exists()  # nothing at the final path until the body succeeds
    assert final.read_text() == "done" and list(final.parent.iterdir()) == [final]

    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert final.read_text() == "done" and list(final.parent.iterdir()) == [final]


def test_a_long_final_name_still_gives_a_temporary_name_that_fits(tmp_path):
    final = tmp_path / ("x" * 250 + ".h5")
    with atomic_path(final) as tmp:
        assert len(tmp.name.encode()) <= 255
        tmp.write_text("ok")
    assert final.read_text() == "ok"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_only_the_temporary_files_of_killed_writers_are_removed(tmp_path):
    """Stale: this host and no such process, or another host's (or the old naming's) after a day."""
    here, old = host_name(), STALE_AFTER_S + 60
    folder = tmp_path / "results" / "x"
    folder.mkdir(parents=True)
    cases = [  # (name, age in seconds, stale)
        (f".inferred.tmp.{here}@{_dead_pid()}.ab12cd_3.h5", 0, True),  # killed here
        (f".inferred.tmp.{here}@{os.getpid()}.ab12cd_4.h5", old, False),  # alive: however old
        (".model.tmp.other-host.example.org@123.zz11yy22.ckpt", 0, False),  # another host, recent
        (".metrics.tmp.other-host.example.org@123.zz11yy23.json", old, True),  # another host, old
        (".prepared_20ms.k3j2h1ab.tmp.h5", 0, False),  # the old naming, recent
        (".targets_20ms.k3j2h1ac.tmp.h5", old, True),  # the old naming, old
        ("inferred.h5", old, False),  # outputs and other files are never touched
        (".inferred.tmp.h5.notes", old, False),
    ]
    for name, age, _ in cases:
        (folder / name).write_text("x")
        _age(folder / name, age)
    link = folder / f".linked.tmp.{here}@{_dead_pid()}.ab12cd_5.h5"
    link.symlink_to(folder / "inferred.h5")
    stale = sorted(folder / name for name, _, is_stale in cases if is_stale)
    assert sorted(remove_stale_temporaries([tmp_path / "results", tmp_path / "none"])) == stale
    kept = [folder / name for name, _, is_stale in cases if not is_stale]
    assert sorted(folder.iterdir()) == sorted([link, *kept])
    assert not any(is_stale_temporary(path) for path in kept)


def test_a_killed_writer_leaves_a_temporary_file_the_next_run_removes(tmp_path):
    """SIGKILL while writing (a full disk kills the same way): the leftover is cleaned up."""
    final = tmp_path / "results" / "summary.tsv"
    code = (
        "import sys, time; from lfads.infra.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half'); print(tmp, flush=True); time.sleep(60)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    writer = subprocess.Popen(
        [sys.executable, "-c", code, str(final)], stdout=subprocess.PIPE, text=True, env=env
    )
    tmp = Path(writer.stdout.readline().strip())
    assert tmp.exists() and not is_stale_temporary(tmp)  # its writer is alive: never touched
    assert remove_stale_temporaries([tmp_path]) == []
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert tmp.exists() and not final.exists()
    assert remove_stale_temporaries([tmp_path]) == [tmp]
    assert not tmp.exists()
