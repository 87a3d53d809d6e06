"""A small Confluence that follows the documented REST contract orgrunner relies on (and no more):

- `GET {base}/rest/api/content/{id}?expand=version` -> 200 with id, type, title, version.number
- `PUT {base}/rest/api/content/{id}` with type, title, version.number = current + 1 and
  body.storage (representation "storage") -> 200 and the page's version becomes that number;
  409 when version.number is not current + 1 (a stale version: someone edited meanwhile)
- 401 for a missing or wrong token: basic (email:API token) for Cloud, whose base is /wiki;
  bearer (personal access token) for Data Center, whose base is the server root
- 404 for an unknown page; 400 for a body that breaks the contract

`edit_after_get` makes another editor bump a page's version right after orgrunner read it, as
many times as asked: the deterministic way to provoke the conflict.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StoredPage:
    title: str
    version: int
    body: str = "<p>old</p>"
    type: str = "page"


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str
    body: Any


@dataclass
class Confluence:
    cloud: bool
    token: str
    user: str = "ops@example.com"
    pages: dict[str, StoredPage] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    edit_after_get: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}" + ("/wiki" if self.cloud else "")

    def __enter__(self) -> Confluence:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _authorized(self, header: str) -> bool:
        if self.cloud:
            expected = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            return header == f"Basic {expected}"
        return header == f"Bearer {self.token}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        site = self
        prefix = ("/wiki" if self.cloud else "") + "/rest/api/content/"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _page(self) -> tuple[str, StoredPage] | None:
                path = self.path.split("?", 1)[0]
                if not path.startswith(prefix):
                    self._send(404, {"statusCode": 404, "message": "no such resource"})
                    return None
                page_id = path[len(prefix):]
                page = site.pages.get(page_id)
                if page is None:
                    self._send(404, {"statusCode": 404, "message": f"No content found with id: {page_id}"})
                    return None
                return page_id, page

            def _record(self, body: Any) -> bool:
                header = self.headers.get("Authorization", "")
                with site._lock:
                    site.requests.append(Recorded(self.command, self.path, header, body))
                if not site._authorized(header):
                    self._send(401, {"statusCode": 401, "message": "Unauthorized; scope does not match"})
                    return False
                return True

            def do_GET(self) -> None:
                if not self._record(None):
                    return
                found = self._page()
                if found is None:
                    return
                page_id, page = found
                with site._lock:
                    answer = {"id": page_id, "type": page.type, "title": page.title, "status": "current"}
                    if "expand=version" in self.path:
                        answer["version"] = {"number": page.version}
                    if site.edit_after_get > 0:  # another editor saves right after this read
                        site.edit_after_get -= 1
                        page.version += 1
                self._send(200, answer)

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    body = None
                if not self._record(body):
                    return
                found = self._page()
                if found is None:
                    return
                page_id, page = found
                try:
                    storage = body["body"]["storage"]
                    number = int(body["version"]["number"])
                    ok = (body["type"] == page.type and isinstance(body["title"], str) and body["title"]
                          and storage["representation"] == "storage" and isinstance(storage["value"], str))
                except (KeyError, TypeError, ValueError):
                    ok = False
                if not ok:
                    self._send(400, {"statusCode": 400, "message": "invalid content update"})
                    return
                with site._lock:
                    if number != page.version + 1:
                        self._send(409, {"statusCode": 409, "message": f"Version must be incremented on update. "
                                         f"Current version is: {page.version}"})
                        return
                    page.version, page.title, page.body = number, body["title"], storage["value"]
                self._send(200, {"id": page_id, "type": page.type, "title": page.title,
                                 "version": {"number": page.version}})

        return Handler
