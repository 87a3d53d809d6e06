"""The Confluence publisher against a local server that follows the documented REST contract
(tests/confluence_server.py): GET with the version, PUT with version + 1 in storage format, one
re-read and retry on 409, one clear line on a second conflict and on 401; Cloud and Data Center."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from orgrunner.errors import InputError
from orgrunner.publish import confluence
from tests.confluence_server import Confluence, StoredPage

TOKEN = "ATATT3xFfGF0-not-a-real-token-9f8e7d"
PAGE = "98765"
STORAGE = "<h1>Compliance</h1><table><tbody><tr><th>account</th></tr></tbody></table>"


def site(cloud: bool, version: int = 7) -> Confluence:
    return Confluence(cloud=cloud, token=TOKEN, pages={PAGE: StoredPage(title="AWS compliance", version=version)})


@pytest.mark.parametrize("cloud", [True, False], ids=["cloud", "data-center"])
def test_reads_the_version_and_writes_version_plus_one_in_storage_format(cloud: bool) -> None:
    with site(cloud) as server:
        target = confluence.page(server.base, PAGE, TOKEN, server.user if cloud else None)
        assert confluence.publish(target, STORAGE, "orgrunner report 20261202T000000Z-abcdef") == 8
    get, put = server.requests
    base = "/wiki/rest/api/content/" if cloud else "/rest/api/content/"
    assert (get.method, get.path) == ("GET", f"{base}{PAGE}?expand=version")
    assert (put.method, put.path) == ("PUT", f"{base}{PAGE}")
    assert put.body == {"id": PAGE, "type": "page", "title": "AWS compliance",
                        "version": {"number": 8, "message": "orgrunner report 20261202T000000Z-abcdef"},
                        "body": {"storage": {"value": STORAGE, "representation": "storage"}}}
    if cloud:
        assert put.authorization == "Basic " + base64.b64encode(f"{server.user}:{TOKEN}".encode()).decode()
    else:
        assert put.authorization == f"Bearer {TOKEN}"
    stored = server.pages[PAGE]
    assert (stored.version, stored.body, stored.title) == (8, STORAGE, "AWS compliance")


def test_a_cloud_site_url_gets_the_wiki_path() -> None:
    target = confluence.page("https://example.atlassian.net", PAGE, TOKEN, "ops@example.com")
    assert target.url == f"https://example.atlassian.net/wiki/rest/api/content/{PAGE}"
    target = confluence.page("https://confluence.example.com/confluence/", PAGE, TOKEN)
    assert target.url == f"https://confluence.example.com/confluence/rest/api/content/{PAGE}"


def test_a_conflict_is_read_again_and_retried_once() -> None:
    with site(cloud=False) as server:
        server.edit_after_get = 1  # someone saves version 8 between our read and our write
        assert confluence.publish(confluence.page(server.base, PAGE, TOKEN), STORAGE, "m") == 9
    assert [(r.method, r.body["version"]["number"] if r.body else None) for r in server.requests] == \
        [("GET", None), ("PUT", 8), ("GET", None), ("PUT", 9)]
    assert server.pages[PAGE].body == STORAGE


def test_a_second_conflict_fails_with_one_clear_line_and_writes_nothing() -> None:
    with site(cloud=False) as server:
        server.edit_after_get = 2
        with pytest.raises(confluence.PublishError) as caught:
            confluence.publish(confluence.page(server.base, PAGE, TOKEN), STORAGE, "m")
    message = str(caught.value)
    assert "\n" not in message and "conflict" in message and "publish again" in message
    assert [r.method for r in server.requests] == ["GET", "PUT", "GET", "PUT"]
    assert server.pages[PAGE].body == "<p>old</p>"


@pytest.mark.parametrize("cloud", [True, False], ids=["cloud", "data-center"])
def test_a_refused_token_is_one_line_that_does_not_show_it(cloud: bool) -> None:
    with site(cloud) as server:
        target = confluence.page(server.base, PAGE, "wrong-" + TOKEN, server.user if cloud else None)
        with pytest.raises(confluence.PublishError) as caught:
            confluence.publish(target, STORAGE, "m")
    message = str(caught.value)
    assert "401" in message and "\n" not in message and TOKEN not in message
    assert [r.method for r in server.requests] == ["GET"]
    assert TOKEN not in repr(target)


def test_an_unknown_page_is_said() -> None:
    with site(cloud=False) as server, pytest.raises(confluence.PublishError, match="no such page"):
        confluence.publish(confluence.page(server.base, "4242", TOKEN), STORAGE, "m")


def test_nothing_listening_is_one_line() -> None:
    with site(cloud=False) as server:
        base = server.base
    with pytest.raises(confluence.PublishError, match="cannot reach"):
        confluence.publish(confluence.page(base, PAGE, TOKEN), STORAGE, "m")


def test_the_token_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(confluence.TOKEN_ENV, raising=False)
    with pytest.raises(InputError, match="needs a token"):
        confluence.read_token(None)
    monkeypatch.setenv(confluence.TOKEN_ENV, TOKEN + "\n")
    assert confluence.read_token(None) == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("from-file-token-123\n")
    assert confluence.read_token(token_file) == "from-file-token-123"
    with pytest.raises(InputError, match="cannot read"):
        confluence.read_token(tmp_path / "missing")
    token_file.write_text("two words\n")
    with pytest.raises(InputError, match="spaces or control"):
        confluence.read_token(token_file)


@pytest.mark.parametrize(("url", "page_id", "problem"), [
    ("http://confluence.example.com", PAGE, "in clear"),
    ("ftp://confluence.example.com", PAGE, "expected https"),
    ("https://confluence.example.com", "12a", "digits"),
    ("https://confluence.example.com", "", "digits"),
])
def test_bad_page_addresses_are_refused_before_any_call(url: str, page_id: str, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        confluence.page(url, page_id, TOKEN)


def test_a_redirect_is_not_followed_with_the_token() -> None:
    """urllib repeats headers to a redirect's target: a server (or a proxy) that redirects must not
    receive the token a second time at another address."""
    import http.server
    import threading

    seen: list[str] = []

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(confluence.PublishError, match="redirects"):
            confluence.publish(confluence.page(base, PAGE, TOKEN), STORAGE, "m")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [f"/rest/api/content/{PAGE}?expand=version"]
