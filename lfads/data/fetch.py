"""Where a dataset's NWB files come from (rule `fetch`): DANDI, a local folder, or the generator.

The configfile's `source` key names exactly one of `dandi`, `local` or
`synthetic`. This module maps it to file paths and materialises the files,
then writes a marker JSON (file, size, SHA-256) that downstream rules depend on.
The workflow imports this module while it parses, for the paths: the DANDI
client and the generator's writers are imported only when files are made.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lfads.data.synthetic import ASSET_PATHS as SYNTHETIC_ASSETS
from lfads.data.synthetic import TRUTH_PATHS as SYNTHETIC_TRUTH

log = logging.getLogger(__name__)


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


def truth_paths(source: dict, data_dir: str | Path) -> dict[str, Path] | None:
    """Ground-truth files of the synthetic source, None for real data."""
    if source_kind(source) != "synthetic":
        return None
    return {role: Path(data_dir) / path for role, path in SYNTHETIC_TRUTH.items()}


def materialise(source: dict, data_dir: str | Path, marker: str | Path) -> list[Path]:
    """Fetch, verify or generate the source's files, then write `marker`."""
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
            instance_url=settings.get("instance_url"),
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

        written = write_synthetic_dataset(data_dir, SyntheticSettings.from_dict(settings))
        files = sorted(written.values())
    write_fetch_marker(
        marker, {path: verified.get(path) or sha256_of(path) for path in files}, kind
    )
    log.info("%s source ready: %d files", kind, len(files))
    return files
