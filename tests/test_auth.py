"""The key middleware in front of the cascade router (and, via --middleware, of vLLM): every route but liveness."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from offramp.serve.auth import OPEN_PATHS, RequireKey, bearer_matches


def _app(key: str | None) -> Starlette:
    paths = ["/v1/chat/completions", "/invocations", "/adapters", "/docs", *OPEN_PATHS]
    app = Starlette(routes=[Route(p, lambda r: PlainTextResponse("ok"), methods=["GET", "POST"]) for p in paths])
    app.add_middleware(RequireKey, key=key)
    return app


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/invocations", "/adapters", "/docs", "/nowhere"])
def test_guarded_paths_need_the_key(path):
    client = TestClient(_app("sk-1"))
    assert client.post(path).status_code == 401
    assert client.post(path, headers={"Authorization": "Bearer sk-2"}).status_code == 401
    assert client.post(path, headers={"Authorization": "sk-1"}).status_code == 401  # no scheme
    ok = client.post(path, headers={"Authorization": "BEARER sk-1"}).status_code
    assert ok == (404 if path == "/nowhere" else 200)


def test_liveness_and_metrics_stay_open_and_no_key_means_no_check():
    client = TestClient(_app("sk-1"))
    assert all(client.get(p).status_code == 200 for p in OPEN_PATHS)
    assert TestClient(_app(None)).post("/invocations").status_code == 200


def test_bearer_scheme_is_case_insensitive_and_the_key_exact():
    assert bearer_matches("Bearer k", "k") and bearer_matches("bearer k", "k") and bearer_matches("BeArEr k", "k")
    assert not bearer_matches("Bearer k2", "k") and not bearer_matches("Basic k", "k") and not bearer_matches(None, "k")
