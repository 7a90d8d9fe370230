"""A loopback server that speaks the part of the DANDI REST API the dandi client uses to download assets.

It serves the files of one folder as the assets of one published dandiset
version, with Range support (the client resumes partial downloads), and counts
requests so tests can assert what the client asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TIMESTAMP = "2022-01-13T04:00:00.000000Z"


def _dandi_etag(path: Path) -> str:
    from dandi.support.digests import get_dandietag

    return get_dandietag(path).as_str()


class FakeDandiArchive:
    """Serve `folder/<asset path>` as assets of `dandiset`@`version` on 127.0.0.1.

    `corrupt` maps asset paths to bytes served instead of the file (its metadata
    then matches the served bytes, as a server with a bad copy would report).
    """

    def __init__(self, folder: Path, dandiset: str, version: str, corrupt: dict[str, bytes] | None = None):
        self.folder, self.dandiset, self.version = Path(folder), dandiset, version
        self.corrupt = dict(corrupt or {})
        self.requests: Counter[str] = Counter()
        self.range_requests: list[str] = []
        self.assets = {}
        for number, path in enumerate(sorted(p for p in self.folder.rglob("*") if p.is_file())):
            relative = path.relative_to(self.folder).as_posix()
            self.assets[f"asset-{number:04d}"] = relative
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/api"

    def __enter__(self) -> FakeDandiArchive:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self) -> int:
        return sum(count for key, count in self.requests.items() if key.endswith("/download/"))

    # -- API payloads ---------------------------------------------------------

    def _content(self, relative: str) -> bytes:
        if relative in self.corrupt:
            return self.corrupt[relative]
        return (self.folder / relative).read_bytes()

    def _version(self) -> dict:
        size = sum(len(self._content(rel)) for rel in self.assets.values())
        return {"version": self.version, "name": "fake", "asset_count": len(self.assets), "size": size,
                "created": TIMESTAMP, "modified": TIMESTAMP, "status": "Published"}

    def _asset(self, asset_id: str) -> dict:
        relative = self.assets[asset_id]
        return {"asset_id": asset_id, "blob": f"blob-{asset_id}", "zarr": None, "path": relative,
                "size": len(self._content(relative)), "created": TIMESTAMP, "modified": TIMESTAMP}

    def _asset_metadata(self, asset_id: str) -> dict:
        relative = self.assets[asset_id]
        served = self.folder / relative
        if relative in self.corrupt:
            served = self.folder / f".corrupt-{asset_id}"
            served.write_bytes(self.corrupt[relative])
        content = served.read_bytes()
        return {
            "id": f"dandiasset:{asset_id}", "identifier": asset_id, "path": relative,
            "contentSize": len(content), "encodingFormat": "application/x-nwb",
            "digest": {"dandi:dandi-etag": _dandi_etag(served),
                       "dandi:sha2-256": hashlib.sha256(content).hexdigest()},
            "contentUrl": [f"{self.api_url}/assets/{asset_id}/download/"],
            "blobDateModified": TIMESTAMP, "schemaKey": "Asset", "schemaVersion": "0.6.3",
        }

    def _handler(self):
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _json(self, payload, status=200):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                path = url.path
                archive.requests[path] += 1
                base = f"/api/dandisets/{archive.dandiset}"
                if path == "/server-info":
                    return self._json({"detail": "not found"}, 404)
                if path == "/api/info/":
                    return self._json({
                        "version": "0.3.0", "cli-minimal-version": "0.60.0", "cli-bad-versions": [],
                        "services": {"api": {"url": archive.api_url}, "webui": {"url": archive.api_url}},
                    })
                if path == f"{base}/":
                    version = archive._version()
                    return self._json({"identifier": archive.dandiset, "created": TIMESTAMP, "modified": TIMESTAMP,
                                       "contact_person": "Test", "embargo_status": "OPEN",
                                       "most_recent_published_version": version, "draft_version": version})
                if path in (f"{base}/versions/{archive.version}/", f"{base}/versions/{archive.version}/info/"):
                    return self._json({**archive._version(), "asset_validation_errors": [],
                                       "version_validation_errors": [],
                                       "metadata": {"identifier": f"DANDI:{archive.dandiset}"}})
                if path == f"{base}/versions/{archive.version}/assets/":
                    wanted = query.get("path", [None])[0]
                    matches = [archive._asset(aid) for aid, rel in archive.assets.items()
                               if wanted is None or rel == wanted or rel.startswith(wanted.rstrip("/") + "/")]
                    if "metadata" in query:
                        for match in matches:
                            match["metadata"] = archive._asset_metadata(match["asset_id"])
                    return self._json({"count": len(matches), "next": None, "previous": None, "results": matches})
                for asset_id in archive.assets:
                    if path in (f"{base}/versions/{archive.version}/assets/{asset_id}/", f"/api/assets/{asset_id}/"):
                        return self._json(archive._asset_metadata(asset_id))
                    if path.endswith(f"/assets/{asset_id}/download/"):
                        return self._download(asset_id)
                return self._json({"detail": f"fake archive has no {path}"}, 404)

            def _download(self, asset_id):
                relative = archive.assets[asset_id]
                content = archive._content(relative)
                start = 0
                if "Range" in self.headers:
                    archive.range_requests.append(self.headers["Range"])
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                body = content[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.command == "HEAD":
                    return
                self.wfile.write(body)

        return Handler

