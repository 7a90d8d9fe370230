"""A loopback server speaking the part of the DANDI REST API that the dandi client downloads with.

It serves the files below one folder as the assets of one published version of
one dandiset, on 127.0.0.1 and a free port, with HTTP Range support (the client
resumes partial downloads with it), and records every request so tests can
assert what the client asked for.

Endpoints (all under /api): info/, dandisets/<id>/, dandisets/<id>/versions/<v>/
and .../info/, .../assets/?path=<prefix> (paginated list, a prefix query like
the real server), .../assets/<asset id>/ (metadata) and .../info/, the same
under assets/<asset id>/, and assets/<asset id>/download/ (GET/HEAD, Range).
The real archive redirects downloads to S3; this one serves the bytes itself.

The client checks each download against the asset metadata's
`dandi:dandi-etag` (and keeps `dandi:sha2-256` alongside); both are computed
here with dandischema's own digest code, from the bytes actually served.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TIMESTAMP = (
    "2022-01-13T04:00:00.000000Z"  # blobDateModified: the client sets each file's mtime to it
)


def dandi_etag(content: bytes) -> str:
    """The DANDI multipart ETag of `content`, as the client computes it while downloading."""
    from dandischema.digests.dandietag import ETagHashlike

    hasher = ETagHashlike(len(content))
    hasher.update(content)
    return hasher.hexdigest()


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # URL path without the query
    query: str
    range: str | None  # the Range header, if any


class FakeDandiArchive:
    """Serve `folder/<asset path>` as the assets of `dandiset`@`version`; use as a context manager.

    corrupt: {asset path: bytes} served instead of the file, with metadata
        (size, digests) consistent with those bytes, as a server holding a
        different copy would report.
    wrong_etag: asset paths whose metadata carries a wrong dandi-etag, so the
        client's own digest check fails.
    stall_after: {asset path: n}: the first download of that asset sends its
        first n bytes, then stalls until `release()` (or the server stops) and
        drops the connection, like a network that goes away mid-download.
    """

    def __init__(
        self,
        folder: str | Path,
        dandiset: str,
        version: str,
        *,
        corrupt: dict[str, bytes] | None = None,
        wrong_etag: set[str] | frozenset = frozenset(),
        stall_after: dict[str, int] | None = None,
    ):
        self.folder, self.dandiset, self.version = Path(folder), dandiset, version
        self.corrupt = dict(corrupt or {})
        self.wrong_etag = set(wrong_etag)
        self.stall_after = dict(stall_after or {})
        self.requests: list[Request] = []
        self.stalled = threading.Event()  # set once a stalled download has sent its bytes
        self._release = threading.Event()
        self._lock = threading.Lock()
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        self.assets = {
            f"{number:08d}-fake-asset": p.relative_to(self.folder).as_posix()
            for number, p in enumerate(files)
        }
        self._digests: dict[str, dict] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        # shutdown() waits for the serving loop's next poll: 0.5 s a server by default.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # -- lifecycle ---------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/api"

    def __enter__(self) -> FakeDandiArchive:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def release(self) -> None:
        """Let a stalled download end (its connection is dropped)."""
        self._release.set()

    # -- what the client asked for ------------------------------------------------

    def download_requests(self) -> list[Request]:
        """The GET requests of the download endpoint, in order (with their Range headers)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.path.endswith("/download/")]

    def downloads(self) -> int:
        """How many times the download endpoint was asked for bytes."""
        return len(self.download_requests())

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # -- payloads -----------------------------------------------------------------

    def content(self, asset_id: str) -> bytes:
        relative = self.assets[asset_id]
        if relative in self.corrupt:
            return self.corrupt[relative]
        return (self.folder / relative).read_bytes()

    def _digest(self, asset_id: str) -> dict:
        if asset_id not in self._digests:  # computed once per asset: the bytes do not change
            content = self.content(asset_id)
            etag = dandi_etag(content)
            if self.assets[asset_id] in self.wrong_etag:
                etag = dandi_etag(content + b"x")
            self._digests[asset_id] = {
                "dandi:dandi-etag": etag,
                "dandi:sha2-256": hashlib.sha256(content).hexdigest(),
            }
        return self._digests[asset_id]

    def version_info(self) -> dict:
        size = sum(len(self.content(aid)) for aid in self.assets)
        return {
            "version": self.version,
            "name": "fake NLB dandiset",
            "asset_count": len(self.assets),
            "size": size,
            "status": "Valid",
            "created": TIMESTAMP,
            "modified": TIMESTAMP,
            "dandiset": {
                "identifier": self.dandiset,
                "created": TIMESTAMP,
                "modified": TIMESTAMP,
                "contact_person": "Test",
                "embargo_status": "OPEN",
            },
        }

    def version_metadata(self) -> dict:
        return {
            "identifier": f"DANDI:{self.dandiset}",
            "id": f"DANDI:{self.dandiset}/{self.version}",
            "version": self.version,
            "name": "fake NLB dandiset",
            "schemaKey": "Dandiset",
            "schemaVersion": "0.6.4",
            "citation": "fake",
            "url": f"{self.api_url}/dandisets/{self.dandiset}/",
        }

    def asset_info(self, asset_id: str) -> dict:
        return {
            "asset_id": asset_id,
            "blob": f"blob-{asset_id}",
            "zarr": None,
            "path": self.assets[asset_id],
            "size": len(self.content(asset_id)),
            "created": TIMESTAMP,
            "modified": TIMESTAMP,
        }

    def asset_metadata(self, asset_id: str) -> dict:
        return {
            "id": f"dandiasset:{asset_id}",
            "identifier": asset_id,
            "path": self.assets[asset_id],
            "contentSize": len(self.content(asset_id)),
            "encodingFormat": "application/x-nwb",
            "digest": self._digest(asset_id),
            "contentUrl": [f"{self.api_url}/assets/{asset_id}/download/"],
            "blobDateModified": TIMESTAMP,
            "schemaKey": "Asset",
            "schemaVersion": "0.6.4",
        }


def _make_handler(archive: FakeDandiArchive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = (
            "HTTP/1.1"  # keep-alive, as a real server; every reply has a Content-Length
        )

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            archive._record(Request(self.command, url.path, url.query, self.headers.get("Range")))
            query = urllib.parse.parse_qs(url.query)
            base = f"/api/dandisets/{archive.dandiset}/"
            version = f"{base}versions/{archive.version}/"
            path = url.path
            if path == "/api/info/":
                return self._json(
                    {
                        "schema_version": "0.6.4",
                        "version": "0.0.0-fake",
                        "cli-minimal-version": "0.60.0",
                        "cli-bad-versions": [],
                        "services": {
                            "api": {"url": archive.api_url},
                            "webui": {"url": archive.api_url.removesuffix("/api")},
                        },
                    }
                )
            if path == base:
                info = archive.version_info()
                return self._json(
                    {
                        **info["dandiset"],
                        "most_recent_published_version": info,
                        "draft_version": {**info, "version": "draft", "status": "Valid"},
                    }
                )
            if path == f"{version}info/":
                return self._json(
                    {
                        **archive.version_info(),
                        "metadata": archive.version_metadata(),
                        "asset_validation_errors": [],
                        "version_validation_errors": [],
                    }
                )
            if path == version:
                return self._json(archive.version_metadata())
            if path == f"{version}assets/":
                return self._asset_list(query)
            for prefix in (f"{version}assets/", "/api/assets/"):
                if path.startswith(prefix):
                    asset_id, _, rest = path[len(prefix) :].partition("/")
                    if asset_id in archive.assets:
                        if rest == "":
                            return self._json(archive.asset_metadata(asset_id))
                        if rest == "info/":
                            return self._json(
                                {
                                    **archive.asset_info(asset_id),
                                    "metadata": archive.asset_metadata(asset_id),
                                }
                            )
                        if rest == "download/":
                            return self._download(asset_id)
            return self._json({"detail": "Not found."}, 404)

        def _asset_list(self, query: dict[str, list[str]]) -> None:
            prefix = query.get("path", [""])[0]
            results = [
                archive.asset_info(aid)
                for aid, rel in sorted(archive.assets.items(), key=lambda x: x[1])
                if rel.startswith(prefix)
            ]
            if "metadata" in query:
                results = [
                    {**result, "metadata": archive.asset_metadata(result["asset_id"])}
                    for result in results
                ]
            self._json({"count": len(results), "next": None, "previous": None, "results": results})

        def _download(self, asset_id: str) -> None:
            content = archive.content(asset_id)
            start, end = 0, len(content) - 1
            requested = self.headers.get("Range")
            if requested:
                first, _, last = requested.removeprefix("bytes=").partition("-")
                start = int(first)
                end = min(int(last), end) if last else end
                if start >= len(content) or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(content)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            body = content[start : end + 1]
            self.send_response(206 if requested else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            if requested:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
            self.end_headers()
            if self.command == "HEAD":
                return
            stall = (
                archive.stall_after.pop(archive.assets[asset_id], None) if not requested else None
            )
            if stall is not None:
                self.wfile.write(body[:stall])
                self.wfile.flush()
                archive.stalled.set()
                archive._release.wait(timeout=60)
                self.close_connection = True  # the rest never comes
                return
            self.wfile.write(body)

        def _json(self, payload: dict, status: int = 200) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    return Handler
