"""The fare service's API keys and rate limit, from its settings: no key file, no authentication and no limiter."""

from __future__ import annotations

import asyncio

import pytest

from taxi_platform.core.settings import load_service_settings
from taxi_platform.serving.api_access import RateLimiter, access_from_settings, hash_key, load_key_hashes
from taxi_platform.serving.request_guard import GuardMiddleware


def _keys_file(tmp_path, *lines: str):
    path = tmp_path / "keys"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_without_a_key_file_there_is_no_authentication_and_no_limiter():
    assert access_from_settings(load_service_settings({})) == (None, None)
    assert access_from_settings(load_service_settings({"TAXI_RATE_LIMIT": "5"})) == (None, None)


def test_the_key_file_and_rate_come_from_the_settings(tmp_path):
    keys = _keys_file(tmp_path, "# ops", "alice:" + hash_key("secret-a"), "", "bob:" + hash_key("secret-b"))
    env = {"TAXI_API_KEYS_FILE": str(keys), "TAXI_RATE_LIMIT": "3"}
    hashes, limiter = access_from_settings(load_service_settings(env))
    assert hashes == {hash_key("secret-a"): "alice", hash_key("secret-b"): "bob"}
    assert isinstance(limiter, RateLimiter) and limiter.rate == 3.0 and limiter.burst == 6.0
    _, limiter = access_from_settings(load_service_settings({**env, "TAXI_RATE_BURST": "1"}))
    assert limiter is not None and limiter.burst == 1.0


def test_rate_zero_means_no_limiter(tmp_path):
    keys = _keys_file(tmp_path, "alice:" + hash_key("secret-a"))
    hashes, limiter = access_from_settings(
        load_service_settings({"TAXI_API_KEYS_FILE": str(keys), "TAXI_RATE_LIMIT": "0"})
    )
    assert hashes and limiter is None


def test_an_empty_or_malformed_key_file_names_what_to_do(tmp_path):
    empty = _keys_file(tmp_path, "# nobody yet")
    with pytest.raises(ValueError, match="remove TAXI_API_KEYS_FILE to turn authentication off"):
        load_key_hashes(empty)
    bad = _keys_file(tmp_path, "alice:not-a-digest")
    with pytest.raises(ValueError, match="line 1: expected name:<64 hex digits"):
        load_key_hashes(bad)


def test_the_limiter_lets_a_burst_through_then_says_how_long_to_wait():
    limiter = RateLimiter(rate=2.0, burst=2.0)
    assert limiter.take("alice", now=0.0) == 0.0
    assert limiter.take("alice", now=0.0) == 0.0
    assert limiter.take("alice", now=0.0) == pytest.approx(0.5)
    assert limiter.take("bob", now=0.0) == 0.0  # a bucket per key
    assert limiter.take("alice", now=1.0) == 0.0


def _call(guard: GuardMiddleware, headers: list[tuple[bytes, bytes]], method: str = "POST") -> list[dict]:
    sent: list[dict] = []

    async def app(scope, receive, send):
        sent.append({"type": "app"})

    async def send(message):
        sent.append(message)

    guard.app = app
    scope = {"type": "http", "path": "/predict", "method": method, "headers": headers}
    asyncio.run(guard(scope, None, send))
    return sent


def test_the_guard_reads_its_keys_from_the_settings(tmp_path):
    keys = _keys_file(tmp_path, "alice:" + hash_key("secret-a"))
    settings = load_service_settings({"TAXI_API_KEYS_FILE": str(keys), "TAXI_RATE_LIMIT": "0"})
    guard = GuardMiddleware(None, settings=settings)  # type: ignore[arg-type]
    assert guard.limiter is None
    body = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    assert _call(guard, body)[0]["status"] == 401
    assert _call(guard, [(b"authorization", b"Bearer secret-a"), *body]) == [{"type": "app"}]
    open_guard = GuardMiddleware(None, settings=load_service_settings({}))  # type: ignore[arg-type]
    assert open_guard.key_hashes is None and _call(open_guard, body) == [{"type": "app"}]
    assert (
        _call(open_guard, [(b"content-type", b"text/plain"), (b"content-length", b"2")])[0]["status"] == 415
    )
    assert _call(open_guard, [(b"content-type", b"application/json")])[0]["status"] == 411
    assert _call(open_guard, [], method="GET") == [{"type": "app"}]
