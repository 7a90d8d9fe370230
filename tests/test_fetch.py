"""fetch with the real dandi client against a loopback server that speaks the DANDI REST API."""

from __future__ import annotations

import hashlib
import os
import socket
import time

import pytest

from dandi_server import FakeDandiArchive
from lfads.fetch import FetchError, fetch_dandi_assets, verify_local_assets

DANDISET, VERSION = "000128", "0.220113.0400"
TRAIN, TEST = "sub-Jenkins/sub-Jenkins_ses-x_desc-train_behavior+ecephys.nwb", "sub-Jenkins/sub-Jenkins_ses-x_desc-test_ecephys.nwb"


@pytest.fixture
def served(tmp_path):
    """A folder of two 'assets' (random bytes; the client does not parse them) and their pins."""
    folder = tmp_path / "server"
    rng = __import__("numpy").random.default_rng(0)
    contents = {TRAIN: rng.bytes(2_500_000), TEST: rng.bytes(40_000)}
    for relative, content in contents.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)
    pins = {relative: hashlib.sha256(content).hexdigest() for relative, content in contents.items()}
    return folder, pins


def test_download_verify_then_nothing_to_do(served, tmp_path):
    folder, pins = served
    out = tmp_path / "out"
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        paths = fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url)
        assert paths == [out / TRAIN, out / TEST]
        assert archive.downloads() == 2
        for path, relative in zip(paths, pins):
            assert path.read_bytes() == (folder / relative).read_bytes()
        mtimes = [path.stat().st_mtime_ns for path in paths]
        assert all(mtime < time.time_ns() - 3e16 for mtime in mtimes)  # dandi sets the server's (2022) mtime

        requests_before = sum(archive.requests.values())
        assert fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url) == paths
        assert sum(archive.requests.values()) == requests_before  # not even a metadata request
        assert [path.stat().st_mtime_ns for path in paths] == mtimes


def test_interrupted_download_is_resumed_with_a_range_request(served, tmp_path):
    """A download killed after 1 MB left <file>.dandidownload/ behind; the next run continues from there."""
    import json

    from dandi.support.digests import get_dandietag

    folder, pins = served
    target = tmp_path / "out" / TRAIN
    partial = target.with_name(target.name + ".dandidownload")
    partial.mkdir(parents=True)
    (partial / "file").write_bytes((folder / TRAIN).read_bytes()[:1_000_000])
    (partial / "checksum").write_text(json.dumps(
        {"dandi-etag": get_dandietag(folder / TRAIN).as_str(), "sha256": pins[TRAIN]}))
    with FakeDandiArchive(folder, DANDISET, VERSION) as archive:
        (path,) = fetch_dandi_assets(DANDISET, VERSION, {TRAIN: pins[TRAIN]}, tmp_path / "out", archive.api_url)
    assert path.read_bytes() == (folder / TRAIN).read_bytes()
    assert archive.range_requests == ["bytes=1000000-"]
    assert not partial.exists()


def test_corrupted_file_fails_names_both_hashes_and_is_kept_aside(served, tmp_path):
    folder, pins = served
    bad = b"not the pinned bytes" * 1000
    out = tmp_path / "out"
    with FakeDandiArchive(folder, DANDISET, VERSION, corrupt={TEST: bad}) as archive:
        with pytest.raises(FetchError) as caught:
            fetch_dandi_assets(DANDISET, VERSION, pins, out, archive.api_url)
    message = str(caught.value)
    actual = hashlib.sha256(bad).hexdigest()
    assert str(out / TEST) in message and pins[TEST] in message and actual in message
    assert not (out / TEST).exists()
    (aside,) = (out / TEST).parent.glob("*.sha256-mismatch-*")
    assert aside.read_bytes() == bad and actual[:12] in aside.name
    assert (out / TRAIN).exists()  # the good file stays


def test_unreachable_server_fails_fast_in_one_line(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch_dandi_assets(DANDISET, VERSION, {TEST: "0" * 64}, tmp_path, url)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert "\n" not in message and url in message and "cannot be reached" in message


def test_local_source(served):
    folder, pins = served
    root = folder.parent
    os.rename(folder, root / DANDISET)
    assert verify_local_assets(root, DANDISET, {TRAIN: pins[TRAIN], TEST: None}) == [
        root / DANDISET / TRAIN, root / DANDISET / TEST]
    with pytest.raises(FetchError, match="no such file"):
        verify_local_assets(root, DANDISET, {"sub-X/missing.nwb": None})
    with pytest.raises(FetchError, match="does not match"):
        verify_local_assets(root, DANDISET, {TEST: pins[TRAIN]})
    assert (root / DANDISET / TEST).exists()  # a user's own file is never moved
