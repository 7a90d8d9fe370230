"""Download pinned NLB assets from DANDI with the dandi client; verify their SHA-256 (rule `fetch`).

How the client is pointed at a server: each pinned asset path is first resolved
to its asset id with `DandiAPIClient(<api url>)` (exact path match), then
`dandi.download.download()` gets the API URL
`<api>/dandisets/<id>/versions/<version>/assets/<asset id>/download/`, a resource
form its URL parser accepts for any server. (The `.../assets/?path=<path>` form
is a path *prefix* query and could pull in other assets whose path starts with
ours.) The client downloads into `<file>.dandidownload/`, resumes an
interrupted download there with HTTP Range requests, and checks the server's
dandi-etag. We then check the SHA-256 pinned in the configfile ourselves: a
file that does not match is renamed aside (never deleted) so it cannot be used
by mistake.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lfads.infra.io import write_json
from lfads.infra.paths import MAX_NAME_BYTES, relative_parts

log = logging.getLogger(__name__)

DEFAULT_INSTANCE = "https://api.dandiarchive.org/api"
REACH_TIMEOUT_S = 8.0  # per attempt of the reachability check (dandi itself would retry for ~54 s)
REACH_ATTEMPTS = 3
PROGRESS_EVERY_S = 15.0  # hashing progress interval for big files
ASIDE_SUFFIX = ".sha256-mismatch-"  # + the first 12 hex digits of the file's actual SHA-256
# Longest file name an asset may have: its set-aside name must fit the file system too.
MAX_ASSET_NAME_BYTES = MAX_NAME_BYTES - len(ASIDE_SUFFIX) - 12


class FetchError(RuntimeError):
    """A download failed, a file is missing, or a file's SHA-256 does not match its pin."""


def _skip_dandi_version_check() -> None:
    """Stop the dandi client checking its own version over the internet; call before importing it.

    Set here, where the client is imported, so that importing this package has no side effect.
    """
    os.environ.setdefault("DANDI_NO_ET", "1")


# -- hashing ------------------------------------------------------------------


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks, with a progress line every ~15 s."""
    path = Path(path)
    digest = hashlib.sha256()
    size, done = path.stat().st_size, 0
    started = last_report = time.monotonic()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                log.info(
                    "hashing %s: %.0f%% of %.2f GB (%.0f MB/s)",
                    path.name,
                    100 * done / size,
                    size / 1e9,
                    done / 1e6 / (now - started),
                )
                last_report = now
    return digest.hexdigest()


def set_aside(path: Path, actual: str) -> Path:
    """Move a file of the wrong hash to `<name>.sha256-mismatch-<hash prefix>`; return its path."""
    aside = path.with_name(f"{path.name}{ASIDE_SUFFIX}{actual[:12]}")
    os.replace(path, aside)
    return aside


def _mismatch(path: Path, expected: str, actual: str, user_file: bool) -> FetchError:
    """The error for a file whose SHA-256 is not its pin (a downloaded file is set aside first)."""
    if user_file:
        return FetchError(
            f"{path}: SHA-256 mismatch: expected {expected}, got {actual}. "
            "Check that this is the right file (and not truncated), "
            "or fix its sha256 in the configfile."
        )
    aside = set_aside(path, actual)
    return FetchError(
        f"{path}: SHA-256 mismatch: expected {expected}, got {actual}. "
        f"The downloaded file was moved to {aside}. "
        "Check the pinned sha256 in the configfile against the DANDI asset; "
        "delete the moved file once inspected and run again to download a fresh copy."
    )


def _checked_relative(asset_path: str) -> str:
    """An asset path must stay below the output folder: relative, no `..`, names short enough."""
    try:
        relative_parts(asset_path, "asset path", MAX_ASSET_NAME_BYTES)
    except ValueError as error:
        raise FetchError(
            f"invalid asset path {asset_path!r} ({error}): expected a relative path like "
            "sub-Jenkins/sub-Jenkins_ses-full_desc-test_ecephys.nwb"
        ) from None
    return asset_path


# -- the DANDI server -----------------------------------------------------------


def api_url_of(instance_url: str | None) -> str:
    """API URL from an API URL (`https://host/api`), or a known instance's web URL or name."""
    if not instance_url:
        return DEFAULT_INSTANCE
    _skip_dandi_version_check()
    from dandi.consts import known_instances, known_instances_rev

    name = known_instances_rev.get(
        instance_url.rstrip("/"), instance_url
    )  # web URL -> instance name
    if name in known_instances:
        return known_instances[name].api.rstrip("/")
    if "://" not in instance_url:
        raise FetchError(
            f"unknown DANDI instance {instance_url!r}: give its API URL "
            f"(e.g. {DEFAULT_INSTANCE}) or one of {', '.join(sorted(known_instances))}"
        )
    return instance_url.rstrip("/")


def check_reachable(api_url: str) -> None:
    """Fail with one line, within ~30 s, when `<api_url>/info/` does not answer."""
    import requests

    info_url = f"{api_url}/info/"
    reason = ""
    for attempt in range(REACH_ATTEMPTS):
        try:
            response = requests.get(info_url, timeout=REACH_TIMEOUT_S)
            if response.ok:
                return
            reason = f"HTTP {response.status_code} from {info_url}"
            if response.status_code < 500:
                break  # a wrong URL does not get better by retrying
        except requests.RequestException as error:
            reason = type(error).__name__
        if attempt + 1 < REACH_ATTEMPTS:
            time.sleep(1.0)
    raise FetchError(
        f"The DANDI server at {api_url} cannot be reached ({reason}). Check the network and the "
        "instance URL, or download the files elsewhere and use a `local` source "
        "(see config/README.md)."
    )


def asset_download_url(api_url: str, dandiset: str, version: str, asset_id: str) -> str:
    """The API URL of one asset, a resource form the dandi client resolves for any server."""
    return f"{api_url}/dandisets/{dandiset}/versions/{version}/assets/{asset_id}/download/"


def _resolve_asset_ids(
    api_url: str, dandiset: str, version: str, assets: dict[str, str]
) -> dict[str, tuple[str, int]]:
    """{asset path: (asset id, bytes)} of the wanted assets of `dandiset`@`version`, exact paths."""
    _skip_dandi_version_check()
    from dandi.dandiapi import DandiAPIClient
    from dandi.exceptions import NotFoundError

    ids = {}
    with DandiAPIClient(api_url) as client:
        try:
            remote = client.get_dandiset(dandiset, version, lazy=False)
        except NotFoundError as error:
            raise FetchError(
                f"DANDI:{dandiset} has no version {version} on {api_url} ({error})"
            ) from error
        for asset_path, expected in assets.items():
            try:
                asset = remote.get_asset_by_path(asset_path)
            except NotFoundError as error:
                raise FetchError(
                    f"DANDI:{dandiset}/{version} on {api_url} has no asset {asset_path}; "
                    "check the asset path in the configfile"
                ) from error
            server_sha = asset.get_raw_metadata().get("digest", {}).get("dandi:sha2-256")
            if server_sha and server_sha != expected:
                log.warning(
                    "the server reports SHA-256 %s for %s, not the pinned %s: the download "
                    "will be rejected",
                    server_sha,
                    asset_path,
                    expected,
                )
            ids[asset_path] = (asset.identifier, asset.size)
    return ids


class _ClientRecords(io.TextIOBase):
    """Stand-in for stdout during `download(format=DEBUG)`: turns its records into log lines.

    Each record is a dict printed on one line (status, checksum, done%...).
    Progress is logged every 10 %; errors are kept for our own message.
    """

    def __init__(self, name: str):
        self.name, self._line, self._next_percent = name, "", 10.0
        self.failures: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._line += text
        while "\n" in self._line:
            line, self._line = self._line.split("\n", 1)
            self._record(line.strip())
        return len(text)

    def _record(self, line: str) -> None:
        if not line:
            return
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            record = None
        if not isinstance(record, dict):
            log.info("dandi: %s", line)
            return
        if record.get("status") == "error":
            self.failures.append(str(record.get("message", record)))
            log.error("dandi: %s: %s", self.name, record.get("message", record))
        elif "done%" in record:
            if record["done%"] >= self._next_percent:
                log.info(
                    "downloading %s: %.0f%% (%.1f MB)",
                    self.name,
                    record["done%"],
                    record["done"] / 1e6,
                )
                while self._next_percent <= record["done%"]:
                    self._next_percent += 10.0
        elif record.keys() & {"status", "checksum", "message"}:
            details = ", ".join(f"{key} {value}" for key, value in record.items() if key != "path")
            log.info("dandi: %s: %s", self.name, details)


@contextlib.contextmanager
def _client_records_to_log(name: str) -> Iterator[_ClientRecords]:
    records = _ClientRecords(name)
    with contextlib.redirect_stdout(records):
        yield records


def _download_one(
    api_url: str,
    dandiset: str,
    version: str,
    asset_path: str,
    asset_id: str,
    size: int,
    expected: str,
    path: Path,
) -> None:
    """Download one asset (`size` bytes) to `path` with the dandi client, then check its SHA-256."""
    _skip_dandi_version_check()
    from dandi.download import DownloadExisting, DownloadFormat, download

    partial = path.with_name(path.name + ".dandidownload")
    log.info(
        "starting download of %s (%.1f MB) of DANDI:%s/%s from %s%s",
        asset_path,
        size / 1e6,
        dandiset,
        version,
        api_url,
        " (resuming a partial download)" if partial.exists() else "",
    )
    started = time.perf_counter()
    client_error: Exception | None = None
    with _client_records_to_log(asset_path) as records:
        try:
            download(
                asset_download_url(api_url, dandiset, version, asset_id),
                path.parent,
                format=DownloadFormat.DEBUG,
                existing=DownloadExisting.OVERWRITE_DIFFERENT,
            )
        except Exception as error:  # the client raises RuntimeError, HTTP and schema errors
            client_error = error
    reported = "; ".join(records.failures) or str(client_error)
    if not path.exists():
        if client_error is None:
            raise FetchError(
                f"the dandi client finished but {path} does not exist "
                f"(asset {asset_id} of DANDI:{dandiset}/{version})"
            )
        kept = (
            f" The partial download in {partial} is kept: run again to resume."
            if partial.exists()
            else ""
        )
        raise FetchError(
            f"downloading {asset_path} of DANDI:{dandiset}/{version} from {api_url} failed: "
            f"{reported}.{kept}"
        ) from client_error
    actual = sha256_of(path)
    if actual != expected:
        error = _mismatch(path, expected, actual, user_file=False)
        if client_error is not None:
            error = FetchError(f"{error} (the dandi client also reported: {reported})")
        raise error
    if (
        client_error is not None
    ):  # e.g. the server's dandi-etag is wrong although the bytes are the pinned ones
        log.warning(
            "the dandi client reported %s for %s, but its SHA-256 matches the pin", reported, path
        )
    log.info(
        "downloaded and verified %s (%.1f MB) in %.1f s",
        path,
        path.stat().st_size / 1e6,
        time.perf_counter() - started,
    )


def fetch_dandi_assets(
    dandiset: str,
    version: str,
    assets: dict[str, str],
    out_dir: str | Path,
    instance_url: str | None = None,
) -> list[Path]:
    """Download `assets` ({asset path: sha256}) of `dandiset`@`version` into `out_dir/<asset path>`.

    Files already present with the pinned hash are left untouched (no request
    is made when all are), a present file with another hash is set aside and
    downloaded again. Every asset is attempted; then one FetchError lists all
    failures. Returns the verified paths, in the order given.
    """
    out_dir = Path(out_dir)
    paths = {asset_path: out_dir / _checked_relative(asset_path) for asset_path in assets}
    missing: dict[str, str] = {}
    for asset_path, expected in assets.items():
        path = paths[asset_path]
        if path.is_file():
            actual = sha256_of(path)
            if actual == expected:
                log.info("already present and verified: %s", path)
                continue
            log.warning(
                "%s has SHA-256 %s, not the pinned %s: moved to %s, downloading again",
                path,
                actual,
                expected,
                set_aside(path, actual),
            )
        missing[asset_path] = expected
    if not missing:
        return list(paths.values())
    api_url = api_url_of(instance_url)
    check_reachable(api_url)
    asset_ids = _resolve_asset_ids(api_url, dandiset, version, missing)
    failures: list[str] = []
    for asset_path, expected in missing.items():
        paths[asset_path].parent.mkdir(parents=True, exist_ok=True)
        try:
            asset_id, size = asset_ids[asset_path]
            _download_one(
                api_url, dandiset, version, asset_path, asset_id, size, expected, paths[asset_path]
            )
        except FetchError as error:
            failures.append(str(error))
    if failures:
        raise FetchError("\n".join(failures))
    return list(paths.values())


def write_fetch_marker(marker: str | Path, files: dict[Path, str], source: str = "dandi") -> None:
    """Write the JSON that downstream rules depend on: each file's path, bytes and verified SHA-256.

    `files` maps each file to its SHA-256, already checked. The downloaded files
    carry the server's (years old) mtimes, so rules depend on this marker, whose
    mtime is that of the fetch.
    """
    write_json(
        marker,
        {
            "source": source,
            "files": [
                {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256}
                for path, sha256 in files.items()
            ],
        },
    )


# -- a local copy -----------------------------------------------------------------


def verify_local_assets(
    folder: str | Path, dandiset: str, assets: dict[str, str | None]
) -> list[Path]:
    """Check that `folder/<dandiset>/<asset path>` exist and match their SHA-256 (when given).

    A user's own files are never moved or changed.
    """
    root = Path(folder) / dandiset
    paths = []
    for asset_path, expected in assets.items():
        path = root / _checked_relative(asset_path)
        if not path.is_file():
            raise FetchError(
                f"{path}: no such file. A local source is laid out like a DANDI download, "
                f"<folder>/<dandiset>/<asset path> (here {root}/{asset_path}); put the file there "
                "or fix source.local (folder, dandiset, asset path) in the configfile."
            )
        if expected:
            actual = sha256_of(path)
            if actual != expected:
                raise _mismatch(path, expected, actual, user_file=True)
            log.info("verified %s (sha256 %s...)", path, actual[:12])
        else:
            log.info("found %s (no sha256 pinned, not verified)", path)
        paths.append(path)
    return paths


# -- command line -------------------------------------------------------------------


def _asset_pin(text: str) -> tuple[str, str]:
    path, sep, sha = text.rpartition("=")
    sha = sha.strip().lower()
    if not sep or not path or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise argparse.ArgumentTypeError(f"expected PATH=SHA256 (64 hex digits), got {text!r}")
    return path, sha


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dandiset", required=True, help="six-digit id, e.g. 000128")
    parser.add_argument("--version", required=True, help="published version, e.g. 0.220113.0400")
    parser.add_argument(
        "--asset",
        action="append",
        required=True,
        type=_asset_pin,
        metavar="PATH=SHA256",
        help="asset path and its pinned SHA-256 (repeat for several)",
    )
    parser.add_argument("--out", type=Path, required=True, help="files go to OUT/<asset path>")
    parser.add_argument(
        "--instance-url",
        default=DEFAULT_INSTANCE,
        help=f"DANDI API URL or known instance name (default {DEFAULT_INSTANCE})",
    )
    parser.add_argument(
        "--marker",
        type=Path,
        help="also write this JSON listing each file with its size and SHA-256",
    )


def run(args: argparse.Namespace) -> int:
    pins = dict(args.asset)
    try:
        paths = fetch_dandi_assets(args.dandiset, args.version, pins, args.out, args.instance_url)
    except FetchError as error:
        log.error("%s", error)
        return 1
    if args.marker:
        write_fetch_marker(args.marker, dict(zip(paths, pins.values())))
    for path in paths:
        print(path)
    return 0
