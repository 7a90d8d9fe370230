"""Where a dataset's NWB files come from (rule `fetch`): DANDI, a local folder, or the generator.

The configfile's `source` key names exactly one of `dandi`, `local` or `synthetic`. This module
maps it to file paths and to fetch jobs, and materialises the files of one job, then writes that
job's marker JSON (each file's path, bytes and SHA-256).

Downloads are never thrown away. The NWB files are outputs of no rule (Snakemake deletes a job's
outputs when the job starts, fails or is killed); only the markers are. Each asset of a `dandi`
or `local` source has its own fetch job (`train`, `test`) whose marker is written only once its
file is verified, and a file already present with its pinned SHA-256 is kept without a request,
so a failed, killed or forced fetch never costs a verified download. The generator writes all of
its files in one job (`synthetic`). Downstream rules depend on the markers and take the file
paths as parameters. The workflow imports this module while it parses (for the paths and the
check of the markers): the DANDI client and the generator are imported only when files are made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS
from lfads.data.synthetic import TRUTH_PATHS as SYNTHETIC_TRUTH

log = logging.getLogger(__name__)

ROLES = ("train", "test")  # the NWB files of every source
SYNTHETIC_JOB = "synthetic"  # the one fetch job of the generator


class FetchedFileError(RuntimeError):
    """A file that a fetch marker records is missing or has changed since it was verified."""


def source_kind(source: dict) -> str:
    (kind,) = source
    return kind


def nwb_paths(source: dict, data_dir: str | Path) -> dict[str, Path]:
    """{"train": path, "test": path} of the NWB files a source provides."""
    kind, settings = source_kind(source), next(iter(source.values()))
    if kind == "local":
        root = Path(settings["folder"]).expanduser() / settings["dandiset"]
        return {role: root / asset["path"] for role, asset in settings["assets"].items()}
    if kind == "dandi":
        return {role: Path(data_dir) / asset["path"] for role, asset in settings["assets"].items()}
    return {role: Path(data_dir) / path for role, path in SYNTHETIC_ASSETS.items()}


def describe_source(source: dict) -> str:
    """Where a source's NWB files come from, in one line (recorded in the exported NWB files)."""
    kind, settings = source_kind(source), next(iter(source.values()))
    if kind == "synthetic":
        return "the built-in synthetic generator (lfads.data.synthetic), in the NLB layout"
    where = f"DANDI:{settings['dandiset']}"
    if settings.get("version"):
        where += f" version {settings['version']}"
    return where + (
        " (downloaded)" if kind == "dandi" else f" (a local copy, {settings['folder']})"
    )


def truth_paths(source: dict, data_dir: str | Path) -> dict[str, Path] | None:
    """Ground-truth files of the synthetic source, None for real data."""
    if source_kind(source) != "synthetic":
        return None
    return {role: Path(data_dir) / path for role, path in SYNTHETIC_TRUTH.items()}


def fetch_jobs(source: dict) -> dict[str, tuple[str, ...]]:
    """{fetch job: the NWB roles whose files it provides}, one job per asset of a dandi or local
    source ({"train": ("train",), "test": ("test",)}), one for the generator ({"synthetic":
    ("train", "test")}, which also writes the truth files)."""
    if source_kind(source) == "synthetic":
        return {SYNTHETIC_JOB: ROLES}
    return {role: (role,) for role in ROLES}


def marker_path(data_dir: str | Path, job: str) -> Path:
    """The marker a fetch job writes once its files are verified: <data_dir>/fetched/<job>.json."""
    return Path(data_dir) / "fetched" / f"{job}.json"


def job_source(source: dict, job: str, nlb_layout: str = "mc_maze") -> dict:
    """The part of `source` that fetch job `job` materialises (the rule's params).

    A dandi or local source is cut down to the job's own asset, so that changing another asset
    reruns only that asset's job; `instance_url` is left out, since where the files come from
    changes none of their bytes and must not rerun the job and everything after it.
    """
    kind, settings = source_kind(source), next(iter(source.values()))
    if kind == "synthetic":  # the generator writes the configfile's layout
        return {kind: {**(settings or {}), "nlb_layout": nlb_layout}}
    settings = {key: value for key, value in settings.items() if key != "instance_url"}
    settings["assets"] = {job: settings["assets"][job]}
    return {kind: settings}


def materialise(
    source: dict, data_dir: str | Path, marker: str | Path, instance_url: str | None = None
) -> list[Path]:
    """Fetch, verify or generate the source's files, then write `marker`.

    source: a whole source, or one fetch job's part of it (`job_source`).
    instance_url: the DANDI API to download from (default: the source's, else the archive's).
    """
    from lfads.data.dandi import sha256_of, write_fetch_marker

    kind, settings = source_kind(source), next(iter(source.values()))
    data_dir = Path(data_dir)
    verified: dict[Path, str] = {}  # hashes fetch already checked against their pins
    if kind == "dandi":
        from lfads.data.dandi import fetch_dandi_assets  # imports the dandi client

        assets = {asset["path"]: asset["sha256"] for asset in settings["assets"].values()}
        files = fetch_dandi_assets(
            settings["dandiset"],
            settings["version"],
            assets,
            data_dir,
            instance_url=instance_url or settings.get("instance_url"),
        )
        verified = dict(zip(files, assets.values()))
    elif kind == "local":
        from lfads.data.dandi import verify_local_assets

        assets = {asset["path"]: asset.get("sha256") for asset in settings["assets"].values()}
        files = verify_local_assets(
            Path(settings["folder"]).expanduser(), settings["dandiset"], assets
        )
        verified = {path: sha for path, sha in zip(files, assets.values()) if sha}
    else:
        from lfads.data.synthetic import SyntheticSettings, write_synthetic_dataset

        values = dict(settings or {})
        layout = values.pop("nlb_layout", "mc_maze")  # (job_source puts the configfile's here)
        written = write_synthetic_dataset(data_dir, SyntheticSettings.from_dict(values, layout))
        files = sorted(written.values())
    write_fetch_marker(
        marker, {path: verified.get(path) or sha256_of(path) for path in files}, kind
    )
    log.info("%s source ready: %d files", kind, len(files))
    return files


def check_fetched(source: dict, data_dir: str | Path) -> None:
    """Raise FetchedFileError when a file that a present marker records is gone or changed.

    Snakemake sees only the markers, so a deleted (or replaced) NWB file would otherwise surface
    late, inside prepare. The message names the file, the marker and what to delete. Cheap: a
    `stat` per file, no hashing.
    """
    for job in fetch_jobs(source):
        marker = marker_path(data_dir, job)
        if not marker.is_file():
            continue
        try:
            records = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError) as error:
            raise FetchedFileError(
                f"{marker}: not a fetch marker ({error}); delete it and run again"
            ) from None
        for record in records:
            path = Path(record["path"])
            again = (
                "put the file back, or fix source.local in the configfile, then delete "
                f"{marker} and run again to verify it"
                if source_kind(source) == "local"
                else f"delete {marker} and run again: its fetch job then "
                + ("generates" if job == SYNTHETIC_JOB else "downloads")
                + " the file again"
            )
            if not path.is_file():
                raise FetchedFileError(
                    f"{path} is missing, but {marker} records it as fetched and verified; {again}."
                )
            if path.stat().st_size != record["bytes"]:
                raise FetchedFileError(
                    f"{path} has {path.stat().st_size} bytes, but {marker} records "
                    f"{record['bytes']}: it changed after it was verified; {again}."
                )
