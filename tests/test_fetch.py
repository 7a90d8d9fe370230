"""fetch: the real dandi client against a loopback DANDI REST API server; local sources."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Before dandi is imported anywhere: keep its digest cache out of the user's home.
os.environ.setdefault("DANDI_CACHE", "ignore")

from dandi_server import FakeDandiArchive

from lfads.data.dandi import (
    REACH_ATTEMPTS,
    FetchError,
    api_url_of,
    fetch_dandi_assets,
    verify_local_assets,
    write_fetch_marker,
)

REPO = Path(__file__).resolve().parents[1]
DANDISET, VERSION = "000140", "0.220113.0408"
TRAIN = "sub-Jenkins/sub-Jenkins_ses-small_desc-train_behavior+ecephys.nwb"
TEST = "sub-Jenkins/sub-Jenkins_ses-small_desc-test_ecephys.nwb"
# Also served, never pinned: one shares TEST's path as a prefix (the API's ?path= filter is a prefix
# match).
EXTRA = [TEST + ".bak", "sub-Other/sub-Other_ecephys.nwb"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def served(tmp_path) -> tuple[Path, dict[str, str]]:
    """A folder of assets (random bytes: the client does not parse them); pins of TRAIN, TEST."""
    folder = tmp_path / "server"
    rng = __import__("numpy").random.default_rng(0)
    contents = {
        TRAIN: rng.bytes(2_000_000),
        TEST: rng.bytes(40_000),
        EXTRA[0]: b"old",
        EXTRA[1]: b"other",
    }
    for relative, content in contents.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    return folder, {TRAIN: sha256(contents[TRAIN]), TEST: sha256(contents[TEST])}


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_download_verify_then_nothing_to_do(served, tmp_path):
    folder, pins = served
    out = tmp_path / "out"
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        paths = fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url)
        assert paths == [out / TRAIN, out / TEST]
        assert [archive.assets[r.path.split("/")[-3]] for r in archive.download_requests()] == [
            TRAIN,
            TEST,
        ]
        assert files_below(out) == sorted([TRAIN, TEST])  # exactly the pinned assets, no leftovers
        for path, relative in zip(paths, pins):
            assert path.read_bytes() == (folder / relative).read_bytes()
        mtimes = [path.stat().st_mtime_ns for path in paths]
        assert all(
            mtime < time.time_ns() - 10**17 for mtime in mtimes
        )  # the client sets the server's (2022) mtime

        requests_before = len(archive.requests)
        assert fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url) == paths
        assert len(archive.requests) == requests_before  # not even a metadata request
        assert [path.stat().st_mtime_ns for path in paths] == mtimes

    write_fetch_marker(tmp_path / "fetched.json", dict(zip(paths, pins.values())))
    marker = json.loads((tmp_path / "fetched.json").read_text())
    assert marker == {
        "source": "dandi",
        "files": [
            {
                "path": str(out / TRAIN),
                "bytes": 2_000_000,
                "sha256": sha256((folder / TRAIN).read_bytes()),
            },
            {
                "path": str(out / TEST),
                "bytes": 40_000,
                "sha256": sha256((folder / TEST).read_bytes()),
            },
        ],
    }


def test_interrupted_download_is_resumed_with_a_range_request(served, tmp_path):
    """A fetch killed mid-download leaves <file>.dandidownload/; the next one continues from it."""
    folder, pins = served
    out = tmp_path / "out"
    partial = out / (TRAIN + ".dandidownload") / "file"
    cut = 1 << 20
    with FakeDandiArchive(folder, DANDISET, VERSION, stall_after={TRAIN: cut}) as archive:
        code = (
            "import sys; from pathlib import Path; "
            "from lfads.data.dandi import fetch_dandi_assets; "
            "fetch_dandi_assets(sys.argv[1], sys.argv[2], {sys.argv[3]: sys.argv[4]}, "
            "Path(sys.argv[5]), sys.argv[6])"
        )
        # Small client chunks, so that the bytes before the stall reach the partial file.
        env = dict(os.environ, DANDI_MAX_CHUNK_SIZE=str(1 << 16), DANDI_CACHE="ignore")
        with open(tmp_path / "killed.log", "w") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    code,
                    DANDISET,
                    VERSION,
                    TRAIN,
                    pins[TRAIN],
                    str(out),
                    archive.api_url,
                ],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
            try:
                assert archive.stalled.wait(30), (tmp_path / "killed.log").read_text()
                deadline = time.monotonic() + 10
                while (
                    not (partial.exists() and partial.stat().st_size == cut)
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.05)
            finally:
                process.kill()
                process.wait()
        assert partial.stat().st_size == cut and not (out / TRAIN).exists()
        archive.release()

        (path,) = fetch_dandi_assets(DANDISET, VERSION, {TRAIN: pins[TRAIN]}, out, archive.api_url)
    assert path.read_bytes() == (folder / TRAIN).read_bytes()
    assert [r.range for r in archive.download_requests()] == [None, f"bytes={cut}-"]
    assert files_below(out) == [TRAIN]  # the .dandidownload folder is gone


def test_corrupted_file_fails_names_both_hashes_and_is_kept_aside(served, tmp_path):
    folder, pins = served
    bad = b"not the pinned bytes" * 1000
    out = tmp_path / "out"
    with FakeDandiArchive(folder, DANDISET, VERSION, corrupt={TEST: bad}) as archive:
        with pytest.raises(FetchError) as caught:
            fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url)
    message = str(caught.value)
    actual = sha256(bad)
    assert str(out / TEST) in message and pins[TEST] in message and actual in message
    assert "expected" in message and "run again" in message
    assert not (out / TEST).exists()
    (aside,) = (out / TEST).parent.glob("*.sha256-mismatch-*")
    assert (
        aside.read_bytes() == bad
        and aside.name == f"{Path(TEST).name}.sha256-mismatch-{actual[:12]}"
    )
    assert aside.name in message
    assert (out / TRAIN).read_bytes() == (
        folder / TRAIN
    ).read_bytes()  # the good file is still fetched


def test_wrong_local_file_is_set_aside_and_downloaded_again(served, tmp_path):
    folder, pins = served
    out = tmp_path / "out"
    (out / TEST).parent.mkdir(parents=True)
    (out / TEST).write_bytes(b"truncated")
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        (path,) = fetch_dandi_assets(DANDISET, VERSION, {TEST: pins[TEST]}, out, archive.api_url)
    assert path.read_bytes() == (folder / TEST).read_bytes()
    assert (
        (out / TEST)
        .with_name(f"{Path(TEST).name}.sha256-mismatch-{sha256(b'truncated')[:12]}")
        .exists()
    )


def test_server_etag_wrong_but_bytes_match_the_pin(served, tmp_path, caplog):
    """The client's own digest check fails; the pinned SHA-256 decides, so the file is kept."""
    folder, pins = served
    with FakeDandiArchive(folder, DANDISET, VERSION, wrong_etag={TEST}) as archive:
        with caplog.at_level(logging.WARNING, logger="lfads.data.dandi"):
            (path,) = fetch_dandi_assets(
                DANDISET, VERSION, {TEST: pins[TEST]}, tmp_path / "out", archive.api_url
            )
    assert path.read_bytes() == (folder / TEST).read_bytes()
    assert "matches the pin" in caplog.text


def test_asset_missing_on_server(served, tmp_path):
    folder, pins = served
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        with pytest.raises(FetchError, match="has no asset sub-Jenkins/nope.nwb"):
            fetch_dandi_assets(
                DANDISET, VERSION, {"sub-Jenkins/nope.nwb": pins[TEST]}, tmp_path, archive.api_url
            )
        with pytest.raises(FetchError, match="has no version 0.999999.0000"):
            fetch_dandi_assets(DANDISET, "0.999999.0000", pins, tmp_path, archive.api_url)
        assert archive.downloads() == 0


def test_unreachable_server_fails_fast_in_one_line(tmp_path, monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    pauses = []  # the pauses between attempts, taken note of rather than waited for
    monkeypatch.setattr("lfads.data.dandi.time.sleep", pauses.append)
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_dandi_assets(DANDISET, VERSION, {TEST: "0" * 64}, tmp_path, url)
    assert time.monotonic() - started + sum(pauses) < 10
    assert pauses == [1.0] * (REACH_ATTEMPTS - 1)  # it tried again before failing
    message = str(caught.value)
    assert "\n" not in message and f"DANDI server at {url} cannot be reached" in message
    assert "`local` source" in message
    assert not any(tmp_path.iterdir())


def test_command_line(served, tmp_path):
    folder, pins = served
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "lfads",
        "fetch",
        "--dandiset",
        DANDISET,
        "--version",
        VERSION,
        "--asset",
        f"{TEST}={pins[TEST]}",
        "--out",
        str(out),
    ]
    env = dict(os.environ, DANDI_CACHE="ignore")
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        done = subprocess.run(
            [*command, "--instance-url", archive.api_url, "--marker", str(tmp_path / "m.json")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        str(out / TEST)
    ]  # the client's records went to the log, not stdout
    assert (
        "starting download of " + TEST + " (0.0 MB)" in done.stderr
        and "downloaded and verified" in done.stderr
    )
    assert json.loads((tmp_path / "m.json").read_text())["files"] == [
        {"path": str(out / TEST), "bytes": 40_000, "sha256": pins[TEST]}
    ]
    assert (out / TEST).read_bytes() == (folder / TEST).read_bytes()

    bad_pin = subprocess.run(
        [*command[:-4], "--asset", f"{TEST}=abc", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_pin.returncode == 2 and "PATH=SHA256" in bad_pin.stderr


def test_local_source(served):
    folder, pins = served
    root = folder.parent
    os.rename(folder, root / DANDISET)
    assert verify_local_assets(root, DANDISET, {TRAIN: pins[TRAIN], TEST: None}) == [
        root / DANDISET / TRAIN,
        root / DANDISET / TEST,
    ]

    with pytest.raises(FetchError) as missing:
        verify_local_assets(root, DANDISET, {TRAIN: pins[TRAIN], "sub-X/missing.nwb": None})
    assert str(root / DANDISET / "sub-X/missing.nwb") in str(missing.value)
    assert "<folder>/<dandiset>/<asset path>" in str(missing.value)

    with pytest.raises(FetchError) as wrong:
        verify_local_assets(root, DANDISET, {TEST: pins[TRAIN]})
    message = str(wrong.value)
    assert (
        str(root / DANDISET / TEST) in message and pins[TRAIN] in message and pins[TEST] in message
    )
    assert files_below(root / DANDISET) == sorted(
        [TRAIN, TEST, *EXTRA]
    )  # a user's own file is never moved


def test_instance_names_and_asset_paths(tmp_path):
    assert api_url_of(None) == api_url_of("dandi") == "https://api.dandiarchive.org/api"
    assert (
        api_url_of("https://dandiarchive.org/") == "https://api.dandiarchive.org/api"
    )  # the web URL
    assert api_url_of("http://127.0.0.1:8000/api/") == "http://127.0.0.1:8000/api"
    with pytest.raises(FetchError, match="unknown DANDI instance 'nope'"):
        api_url_of("nope")
    for bad in ("../escape.nwb", "/abs/file.nwb", "sub-A//file.nwb"):
        with pytest.raises(FetchError, match="invalid asset path"):
            fetch_dandi_assets(
                DANDISET, VERSION, {bad: "0" * 64}, tmp_path, "http://127.0.0.1:9/api"
            )
        with pytest.raises(FetchError, match="invalid asset path"):
            verify_local_assets(tmp_path, DANDISET, {bad: None})
