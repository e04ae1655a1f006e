"""API keys and per-key rates, with an injected clock."""

import pytest

from serve_app.api.access import KeyGate, TokenBucket, load_api_keys
from serve_app.core.errors import AuthenticationFailed, RateLimited, error_body, invalid_request


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_keys_come_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEYS", " sk-a, ,sk-b ")
    secrets = tmp_path / "keys"
    secrets.write_text("# rotated 2026-11\nsk-c\n\n")
    assert load_api_keys("MY_KEYS", str(secrets)) == ["sk-a", "sk-b", "sk-c"]
    monkeypatch.delenv("MY_KEYS")
    assert load_api_keys("MY_KEYS", None) == []


def test_without_keys_everyone_is_admitted():
    gate = KeyGate([], None, None, Clock())
    assert not gate.enabled
    gate.admit(None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-a", "sk-a"])
def test_missing_key_is_401(header):
    with pytest.raises(AuthenticationFailed, match="Missing API key") as caught:
        KeyGate(["sk-a"], None, None, Clock()).admit(header)
    assert caught.value.status == 401 and error_body(caught.value)["error"]["code"] == "invalid_api_key"


def test_wrong_key_is_401_and_right_keys_pass():
    gate = KeyGate(["sk-a", "sk-b"], None, None, Clock())
    with pytest.raises(AuthenticationFailed, match="Incorrect"):
        gate.admit("Bearer sk-c")
    gate.admit("Bearer sk-a")
    gate.admit("bearer sk-b")


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.try_take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(0.0) == pytest.approx(0.5)
    assert bucket.try_take(0.5) == 0.0
    assert bucket.try_take(10.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at burst


def test_rate_limit_is_per_key_with_retry_after():
    clock = Clock()
    gate = KeyGate(["sk-a", "sk-b"], requests_per_minute=60, burst=2, clock=clock)
    gate.admit("Bearer sk-a")
    gate.admit("Bearer sk-a")
    with pytest.raises(RateLimited) as caught:
        gate.admit("Bearer sk-a")
    assert caught.value.status == 429 and caught.value.headers() == {"Retry-After": "1"}
    gate.admit("Bearer sk-b")  # another key has its own bucket
    clock.now += 1.0
    gate.admit("Bearer sk-a")


def test_rate_limited_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(RateLimited("slow down", retry_after_s=2.5)))
    assert error.retry_after_s == 2.5 and error.headers() == {"Retry-After": "3"}


def test_invalid_request_names_the_first_bad_field():
    error = invalid_request([{"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'", "type": "x"}])
    assert error.param == "messages.0.role" and error.message.startswith("messages.0.role:")
    assert invalid_request([{"loc": (), "msg": "bad", "type": "json_invalid"}]).message.endswith("not valid JSON.")
