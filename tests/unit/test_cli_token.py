"""``realtime token``: a token the server accepts, for the user and the time asked."""

from __future__ import annotations

import time

import pytest

from realtime.auth import TokenVerifier
from realtime.cli import main

SECRET = "cli-token-test-secret-of-32-characters!"


def test_prints_a_token_the_server_accepts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REALTIME_JWT_SECRET", SECRET)
    monkeypatch.setenv("REALTIME_JWT_AUDIENCE", "app")
    monkeypatch.delenv("REALTIME_JWT_ISSUER", raising=False)
    assert main(["token", "--user", "u42", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip()
    principal = TokenVerifier(secret=SECRET, audience="app").verify(token)
    assert principal.user == "u42"
    assert principal.expires is not None and abs(principal.expires - (time.time() + 120)) < 5


def test_without_a_secret_it_says_what_to_set(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("REALTIME_JWT_SECRET", raising=False)
    assert main(["token", "--user", "u1"]) == 2
    assert "REALTIME_JWT_SECRET" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["token", "--user", "u1", "--ttl", "0"])


@pytest.mark.parametrize("secret", ["change-me", "x" * 31])
def test_a_secret_shorter_than_32_characters_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], secret: str) -> None:
    """Regression: the command signed with any secret, however short (HS256 with a short secret can be guessed
    offline from one token); the server refuses such a secret at start, and so does the command now."""
    monkeypatch.setenv("REALTIME_JWT_SECRET", secret)
    assert main(["token", "--user", "u1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "REALTIME_JWT_SECRET must be at least 32 characters" in err
    monkeypatch.setenv("REALTIME_JWT_SECRET", "x" * 32)
    assert main(["token", "--user", "u1"]) == 0
