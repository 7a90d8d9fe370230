"""Download pinned NLB assets from DANDI with the dandi client, and verify their SHA-256 (rule `fetch`).

The dandi client downloads into `<file>.dandidownload/`, resumes an interrupted
download with HTTP Range requests, and checks the server's digest. We then
check the SHA-256 pinned in the configfile ourselves: a file that does not
match is renamed aside (never deleted) so it cannot be used by mistake.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
import urllib.parse
from pathlib import Path

os.environ.setdefault("DANDI_NO_ET", "1")  # no version check against the internet on import

log = logging.getLogger(__name__)

DEFAULT_INSTANCE = "https://api.dandiarchive.org/api"
REACH_TIMEOUT_S = 10.0
REACH_ATTEMPTS = 3


class FetchError(RuntimeError):
    """A download failed or a file's SHA-256 does not match its pin."""


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, with a progress line every ~1 GB."""
    digest = hashlib.sha256()
    size, done, next_report = path.stat().st_size, 0, 1 << 30
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
            done += len(chunk)
            if done >= next_report:
                log.info("hashing %s: %.0f%%", path.name, 100 * done / size)
                next_report += 1 << 30
    return digest.hexdigest()


def set_aside(path: Path, actual: str) -> Path:
    """Rename a file whose hash is wrong to `<name>.sha256-mismatch-<hash prefix>`; return the new path."""
    aside = path.with_name(f"{path.name}.sha256-mismatch-{actual[:12]}")
    os.replace(path, aside)
    return aside


def check_reachable(instance_url: str) -> None:
    """Fail in one line, within ~30 s, when the DANDI API cannot be reached (the client would retry ~54 s)."""
    import requests

    info_url = instance_url.rstrip("/") + "/info/"
    for attempt in range(REACH_ATTEMPTS):
        try:
            requests.get(info_url, timeout=REACH_TIMEOUT_S).raise_for_status()
            return
        except requests.RequestException as error:
            reason = error
            if attempt + 1 < REACH_ATTEMPTS:
                time.sleep(1.0)
    raise FetchError(
        f"The DANDI server at {instance_url} cannot be reached ({type(reason).__name__}). "
        "Check the network, or download the files elsewhere and use a `local` source (config/README.md)."
    )


def asset_url(instance_url: str, dandiset: str, version: str, asset_path: str) -> str:
    """The API URL of one asset of a published version, a form the dandi client resolves itself."""
    quoted = urllib.parse.quote(asset_path, safe="/+")
    return f"{instance_url.rstrip('/')}/dandisets/{dandiset}/versions/{version}/assets/?path={quoted}"


def _verify(path: Path, expected: str, user_file: bool) -> None:
    actual = sha256_of(path)
    if actual == expected:
        log.info("verified %s (sha256 %s...)", path, actual[:12])
        return
    if user_file:
        raise FetchError(f"{path}: SHA-256 {actual} does not match the pinned {expected}. "
                         "Check that this is the right file, or fix the sha256 in the configfile.")
    aside = set_aside(path, actual)
    raise FetchError(
        f"{path}: SHA-256 mismatch: expected {expected}, got {actual}. The file was moved to {aside}; "
        "inspect or delete it, then run again to download a fresh copy."
    )


def fetch_dandi_assets(dandiset: str, version: str, assets: dict[str, str], out_dir: str | Path,
                       instance_url: str | None = None) -> list[Path]:
    """Download `assets` ({asset path: sha256}) of `dandiset`@`version` into `out_dir/<asset path>`.

    Files already present with the pinned hash are left untouched, so a second
    call downloads nothing. Returns the verified paths, in the order given.
    """
    from dandi.download import DownloadExisting, DownloadFormat, download

    instance_url = instance_url or DEFAULT_INSTANCE
    out_dir = Path(out_dir)
    paths = [out_dir / asset_path for asset_path in assets]
    missing = []
    for (asset_path, expected), path in zip(assets.items(), paths):
        if path.exists():
            actual = sha256_of(path)
            if actual == expected:
                log.info("already present and verified: %s", path)
                continue
            log.warning("%s has SHA-256 %s, not the pinned %s: moved to %s, downloading again",
                        path, actual, expected, set_aside(path, actual))
        missing.append(asset_path)
    if not missing:
        return paths
    check_reachable(instance_url)
    for asset_path in missing:
        path = out_dir / asset_path
        path.parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from DANDI:%s/%s", asset_path, dandiset, version)
        started = time.perf_counter()
        try:
            download(asset_url(instance_url, dandiset, version, asset_path), path.parent,
                     format=DownloadFormat.DEBUG, existing=DownloadExisting.OVERWRITE_DIFFERENT)
        except Exception as error:  # the client raises RuntimeError, HTTP and schema errors
            raise FetchError(f"downloading {asset_path} of DANDI:{dandiset}/{version} from {instance_url} "
                             f"failed: {error}. Run again to resume.") from error
        if not path.exists():
            raise FetchError(f"the dandi client finished but {path} does not exist; "
                             f"check that {asset_path} is an asset of DANDI:{dandiset}/{version}")
        log.info("downloaded %s (%.1f MB) in %.1f s", asset_path, path.stat().st_size / 1e6,
                 time.perf_counter() - started)
        _verify(path, assets[asset_path], user_file=False)
    return paths


def verify_local_assets(folder: str | Path, dandiset: str, assets: dict[str, str | None]) -> list[Path]:
    """Check that `folder/<dandiset>/<asset path>` exist (and match their SHA-256, when given)."""
    root = Path(folder) / dandiset
    paths = []
    for asset_path, expected in assets.items():
        path = root / asset_path
        if not path.is_file():
            raise FetchError(f"{path}: no such file. A local source is laid out as <folder>/<dandiset>/<asset path>; "
                             f"put the file there or fix source.local in the configfile.")
        if expected:
            _verify(path, expected, user_file=True)
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dandiset", required=True, help="six-digit id, e.g. 000128")
    parser.add_argument("--version", required=True, help="published version, e.g. 0.220113.0400")
    parser.add_argument("--asset", action="append", required=True, metavar="PATH=SHA256",
                        help="asset path and its pinned SHA-256 (repeat for several)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--instance-url", default=DEFAULT_INSTANCE)


def run(args: argparse.Namespace) -> int:
    from lfads.logs import configure

    configure()
    assets = dict(item.rsplit("=", 1) for item in args.asset)
    try:
        for path in fetch_dandi_assets(args.dandiset, args.version, assets, args.out, args.instance_url):
            print(path)
    except FetchError as error:
        log.error("%s", error)
        return 1
    return 0
