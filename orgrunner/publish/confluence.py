"""Publishing a page to Confluence (Cloud or Data Center) through its REST API, storage format.

The contract used (Confluence REST API v1, the same on Cloud and Data Center):

```
GET  {base}/rest/api/content/{id}?expand=version    -> 200 {"id", "type", "title", "version": {"number": N}}
PUT  {base}/rest/api/content/{id}                   body {"id", "type": "page", "title",
                                                          "version": {"number": N + 1, "message"},
                                                          "body": {"storage": {"value", "representation": "storage"}}}
                                                    -> 200; 409 when N + 1 is not the next version
                                                       (someone edited meanwhile); 401 bad token
```
`{base}` is `https://SITE.atlassian.net/wiki` on Cloud (added when the URL names only the site)
and the server's URL, context path included, on Data Center. Cloud authenticates with the
account's email and an API token (basic), Data Center with a personal access token (bearer).
On a 409 the page is read again and the update retried once; a second conflict, a refused token
and any other failure are one line (`PublishError`). The token never reaches the command line,
an error message or a log: it is registered with the scrubber the moment it is read.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orgrunner.errors import InputError, OrgrunnerError
from orgrunner.records.audit import register_secret, scrub

TOKEN_ENV = "ORGRUNNER_CONFLUENCE_TOKEN"
PAGE_ID_CHARS = frozenset("0123456789")
TIMEOUT = 60.0


class PublishError(OrgrunnerError):
    """The page could not be updated; the message is one line."""


@dataclass(frozen=True)
class Page:
    base_url: str  # up to, not including, /rest/api
    page_id: str
    token: str = field(repr=False)
    user: str | None = None  # Cloud: the account's email (basic auth); None: a bearer token

    @property
    def url(self) -> str:
        return f"{self.base_url}/rest/api/content/{self.page_id}"


def read_token(token_file: Path | None) -> str:
    """The token from `token_file`, else from $ORGRUNNER_CONFLUENCE_TOKEN; registered as a secret."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"--confluence-token-file {token_file}: cannot read: "
                             f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
        where = f"--confluence-token-file {token_file}"
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = f"${TOKEN_ENV}"
    if not token:
        raise InputError(f"publishing to Confluence needs a token: set {TOKEN_ENV} or pass "
                         "--confluence-token-file (never on the command line)")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise InputError(f"{where}: the token holds spaces or control characters")
    register_secret(token)
    return token


def page(url: str, page_id: str, token: str, user: str | None = None) -> Page:
    """Check what names the page, before any call: a page id is digits; the URL is https (plain
    http only to this machine, where the token cannot be overheard)."""
    if not page_id or not set(page_id) <= PAGE_ID_CHARS or len(page_id) > 20:
        raise InputError(f"--page-id {page_id!r}: a Confluence page id is digits")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        raise InputError(f"--confluence-url {url!r}: expected https://SITE.atlassian.net or the server's URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise InputError(f"--confluence-url {url!r}: plain http would send the token in clear; use https")
    path = parts.path.rstrip("/")
    if path.endswith("/rest/api") or "/rest/api/" in path + "/":
        path = path[: path.index("/rest/api")]
    if parts.hostname.endswith(".atlassian.net") and not path:
        path = "/wiki"  # Cloud serves Confluence under /wiki
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return Page(base_url=base, page_id=page_id, token=token, user=user or None)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def publish(target: Page, storage: str, message: str) -> int:
    """Replace the page's body with `storage` (storage format XHTML); return the new version."""
    for attempt in (1, 2):
        current = _request(target, "GET", f"{target.url}?expand=version")
        try:
            version = int(current["version"]["number"])
            title = str(current["title"])
            kind = str(current.get("type", "page"))
        except (KeyError, TypeError, ValueError):
            raise PublishError(f"Confluence page {target.page_id}: the answer has no version number") from None
        body = {"id": target.page_id, "type": kind, "title": title,
                "version": {"number": version + 1, "message": message},
                "body": {"storage": {"value": storage, "representation": "storage"}}}
        try:
            _request(target, "PUT", target.url, body)
            return version + 1
        except _Conflict:
            if attempt == 2:
                raise PublishError(f"Confluence page {target.page_id}: edited by someone else while publishing, "
                                   "twice (version conflict); not updated: publish again") from None
    raise AssertionError("unreachable")


class _Conflict(Exception):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib would repeat the Authorization header to wherever a redirect points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def _request(target: Page, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Accept": "application/json", "Authorization": _authorization(target)}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    where = f"Confluence page {target.page_id} ({method})"
    try:
        with _OPENER.open(request, timeout=TIMEOUT) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        status = exc.code
        detail = _message(exc)
        exc.close()
        if status == 409 and method == "PUT":
            raise _Conflict() from None
        if status == 401:
            who = "the account email (--confluence-user) and API token" if target.user else "the token"
            raise PublishError(f"{where}: Confluence refused {who} (401): check ${TOKEN_ENV} or the token file") \
                from None
        if status == 403:
            raise PublishError(f"{where}: no permission to edit this page (403){detail}") from None
        if 300 <= status < 400:
            raise PublishError(f"{where}: the server redirects (HTTP {status}); give --confluence-url as the "
                               "address it redirects to (the token is never sent on to another address)") from None
        if status == 404:
            raise PublishError(f"{where}: no such page, or not visible to this token (404)") from None
        raise PublishError(f"{where}: HTTP {status}{detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PublishError(f"{where}: cannot reach {target.base_url}: {scrub(str(reason))}") from None
    try:
        parsed = json.loads(raw or b"{}")
    except ValueError:
        raise PublishError(f"{where}: the answer is not JSON (is {target.base_url} a Confluence URL?)") from None
    if not isinstance(parsed, dict):
        raise PublishError(f"{where}: unexpected answer")
    return parsed


def _authorization(target: Page) -> str:
    if target.user:
        pair = base64.b64encode(f"{target.user}:{target.token}".encode()).decode("ascii")
        register_secret(pair)
        return f"Basic {pair}"
    return f"Bearer {target.token}"


def _message(exc: urllib.error.HTTPError) -> str:
    """Confluence's own explanation, short and scrubbed ('' when there is none)."""
    try:
        text = json.loads(exc.read(4096) or b"{}").get("message", "")
    except (ValueError, AttributeError, OSError):
        return ""
    text = " ".join(scrub(str(text)).split())[:200]
    return f": {text}" if text else ""
