"""The tracking snippet as the service serves it: cacheable JavaScript, small, valid syntax.
Its behaviour in a real browser is proven in tests/e2e/test_browser.py."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app

SNIPPET_FILE = Path(__file__).parents[2] / "capture" / "snippet.js"


@pytest.fixture
def plain_client() -> TestClient:
    return TestClient(create_app())


def test_snippet_is_served_as_cacheable_javascript(plain_client: TestClient) -> None:
    response = plain_client.get("/v1/snippet.js", headers={"Accept-Encoding": "identity"})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "public" in response.headers["cache-control"]
    assert "max-age=" in response.headers["cache-control"]
    assert "content-encoding" not in response.headers
    assert response.content == SNIPPET_FILE.read_bytes()

    etag = response.headers["etag"]
    again = plain_client.get("/v1/snippet.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""


def test_snippet_is_gzipped_for_browsers_that_accept_it(plain_client: TestClient) -> None:
    response = plain_client.get("/v1/snippet.js", headers={"Accept-Encoding": "gzip, br"})

    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.content == SNIPPET_FILE.read_bytes()  # httpx inflates it
    assert len(gzip.compress(SNIPPET_FILE.read_bytes())) < 3_000


def test_snippet_stays_small_and_dependency_free() -> None:
    source = SNIPPET_FILE.read_text()

    assert len(source.encode()) < 8_000
    for loader in ("import ", "require(", "<script"):
        assert loader not in source.split("*/", 1)[1]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_snippet_is_valid_javascript() -> None:
    result = subprocess.run(
        ["node", "--check", str(SNIPPET_FILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
