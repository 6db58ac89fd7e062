"""realtime.auth: JWT verification with pinned algorithms (HS256 secret, or RS256/ES256 from a JWKS).

Keys are generated here with ``cryptography``; every refusal must be a ClientError with code unauthorized
(or token_expired for an expired token), never another exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from realtime.auth import Principal, TokenVerifier
from realtime.errors import ClientError

SECRET = "auth-test-secret-that-is-at-least-32-bytes-long"
NOW = int(time.time())
EXP = NOW + 3600


@pytest.fixture(autouse=True)
def _real_time_now() -> None:
    """Tokens are made against the real time of each test, not of the import (a long run would age them)."""
    global NOW, EXP
    NOW = int(time.time())
    EXP = NOW + 3600


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "exp": EXP}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def jwk(algorithm: type[RSAAlgorithm] | type[ECAlgorithm], public_key: Any, kid: str, alg: str) -> dict[str, Any]:
    key = algorithm.to_jwk(public_key, as_dict=True)
    return {**key, "kid": kid, "alg": alg, "use": "sig"}


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ec_other = ec.generate_private_key(ec.SECP256R1())
        self.jwks = {"keys": [jwk(RSAAlgorithm, self.rsa.public_key(), "rsa-1", "RS256"),
                              jwk(ECAlgorithm, self.ec.public_key(), "ec-1", "ES256")]}
        self.rsa_public_pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def rs256(self, payload: dict[str, Any], kid: str | None = "rsa-1", key: Any = None) -> str:
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, key or self.rsa, algorithm="RS256", headers=headers)

    def es256(self, payload: dict[str, Any], kid: str | None = "ec-1", key: Any = None) -> str:
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, key or self.ec, algorithm="ES256", headers=headers)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="module")
def jwks_verifier(keys: Keys) -> TokenVerifier:
    return TokenVerifier(jwks=keys.jwks)


HS = TokenVerifier(secret=SECRET)


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def refused(verifier: TokenVerifier, token: object, code: str = "unauthorized") -> ClientError:
    with pytest.raises(ClientError) as info:
        verifier.verify(token)
    assert info.value.code == code, info.value.message
    return info.value


# -- valid tokens ------------------------------------------------------------------------------------------

def test_hs256_valid() -> None:
    assert HS.verify(hs256(claims())) == Principal("alice", float(EXP))


def test_rs256_valid(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    assert jwks_verifier.verify(keys.rs256(claims(sub="rsa-user"))) == Principal("rsa-user", float(EXP))


def test_es256_valid(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    assert jwks_verifier.verify(keys.es256(claims(sub="ec-user"))) == Principal("ec-user", float(EXP))


def test_single_key_jwks_accepts_a_token_without_kid(keys: Keys) -> None:
    verifier = TokenVerifier(jwks={"keys": [keys.jwks["keys"][1]]})
    assert verifier.verify(keys.es256(claims(), kid=None)) == Principal("alice", float(EXP))


def test_multi_key_jwks_needs_a_kid(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.rs256(claims(), kid=None))


def test_unknown_kid_is_refused(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.rs256(claims(), kid="rsa-2"))


def test_kid_of_another_algorithm_is_refused(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.es256(claims(), kid="rsa-1"))
    refused(jwks_verifier, keys.rs256(claims(), kid="ec-1"))


def test_from_jwks_text(keys: Keys) -> None:
    verifier = TokenVerifier.from_jwks_text(json.dumps(keys.jwks), audience="app")
    assert verifier.verify(keys.rs256(claims(aud="app"))) == Principal("alice", float(EXP))


def test_audience_and_issuer_when_configured_and_right() -> None:
    verifier = TokenVerifier(secret=SECRET, audience="app", issuer="https://issuer.example")
    token = hs256(claims(aud="app", iss="https://issuer.example"))
    assert verifier.verify(token) == Principal("alice", float(EXP))


def test_audience_and_issuer_ignored_when_not_configured() -> None:
    assert HS.verify(hs256(claims(aud="other", iss="whoever"))) == Principal("alice", float(EXP))


def test_leeway_accepts_a_just_expired_token() -> None:
    token = hs256(claims(exp=NOW - 5))
    assert TokenVerifier(secret=SECRET, leeway=60).verify(token) == Principal("alice", float(NOW - 5))
    refused(HS, token, "token_expired")


def test_an_exp_past_the_float_range_never_expires() -> None:
    assert HS.verify(hs256(claims(exp=10**400))) == Principal("alice", math.inf)


# -- refusals ----------------------------------------------------------------------------------------------

def test_wrong_secret() -> None:
    refused(HS, hs256(claims(), secret="a-different-secret-that-is-32-bytes-long!"))


def test_wrong_rsa_key(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.rs256(claims(), key=keys.rsa_other))


def test_wrong_ec_key(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.es256(claims(), key=keys.ec_other))


def test_tampered_payload(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    header, _, signature = keys.rs256(claims()).split(".")
    forged = f"{header}.{b64json(claims(sub='mallory'))}.{signature}"
    refused(jwks_verifier, forged)
    h, _, s = hs256(claims()).split(".")
    refused(HS, f"{h}.{b64json(claims(sub='mallory'))}.{s}")


@pytest.mark.parametrize("header", [{"alg": "none", "typ": "JWT"}, {"alg": "None", "typ": "JWT"},
                                    {"alg": "none", "typ": "JWT", "kid": "rsa-1"}, {"typ": "JWT"}])
def test_alg_none_is_refused(header: dict[str, Any], jwks_verifier: TokenVerifier) -> None:
    token = f"{b64json(header)}.{b64json(claims())}."
    refused(HS, token)
    refused(jwks_verifier, token)


def test_hs256_signed_with_the_rsa_public_key_is_refused_by_an_rs256_verifier(keys: Keys) -> None:
    single = TokenVerifier(jwks={"keys": [keys.jwks["keys"][0]]})
    for header in ({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, {"alg": "HS256", "typ": "JWT"}):
        signing_input = f"{b64json(header)}.{b64json(claims())}"
        signature = hmac.new(keys.rsa_public_pem, signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{b64(signature)}"
        refused(single, token)
        # and the same key PEM configured as an HS secret does not make an RS256 token valid either
    refused(TokenVerifier(secret=keys.rsa_public_pem.decode()), keys.rs256(claims()))


def test_rs256_token_is_refused_by_an_hs256_verifier(keys: Keys) -> None:
    refused(HS, keys.rs256(claims()))
    refused(HS, keys.es256(claims()))


def test_hs512_with_the_right_secret_is_refused() -> None:
    refused(HS, jwt.encode(claims(), SECRET + SECRET, algorithm="HS512"))


def test_expired_hs256() -> None:
    error = refused(HS, hs256(claims(exp=NOW - 1)), "token_expired")
    assert error.message == "the token has expired"


def test_expired_rs256(keys: Keys, jwks_verifier: TokenVerifier) -> None:
    refused(jwks_verifier, keys.rs256(claims(exp=NOW - 60)), "token_expired")


def test_expired_but_forged_is_unauthorized_not_expired() -> None:
    refused(HS, hs256(claims(exp=NOW - 60), secret="forged-secret-forged-secret-forged-secret"))


def test_nbf_in_the_future() -> None:
    refused(HS, hs256(claims(nbf=NOW + 600)))
    assert HS.verify(hs256(claims(nbf=NOW - 600))) == Principal("alice", float(EXP))


@pytest.mark.parametrize("extra", [{"aud": "other"}, {"aud": ["other", "x"]}, {}])
def test_wrong_or_missing_audience_when_configured(extra: dict[str, Any]) -> None:
    refused(TokenVerifier(secret=SECRET, audience="app"), hs256(claims(**extra)))


@pytest.mark.parametrize("extra", [{"iss": "https://evil.example"}, {}])
def test_wrong_or_missing_issuer_when_configured(extra: dict[str, Any]) -> None:
    refused(TokenVerifier(secret=SECRET, issuer="https://issuer.example"), hs256(claims(**extra)))


@pytest.mark.parametrize("payload", [
    {"exp": EXP}, {"sub": "", "exp": EXP}, {"sub": 42, "exp": EXP}, {"sub": ["alice"], "exp": EXP},
    {"sub": None, "exp": EXP},
])
def test_missing_or_bad_sub(payload: dict[str, Any]) -> None:
    refused(HS, hs256(payload))


@pytest.mark.parametrize("payload", [{"sub": "alice"}, {"sub": "alice", "exp": "soon"}, {"sub": "alice", "exp": None},
                                     {"sub": "alice", "exp": True}, {"sub": "alice", "exp": False}])
def test_missing_or_bad_exp(payload: dict[str, Any]) -> None:
    """Unauthorized, never token_expired (which tells a client to get a new token and resume: this one is not
    a number, a fresh one of the same kind would fail the same way). PyJWT reads true as 1, long past."""
    refused(HS, hs256(payload), "unauthorized")


@pytest.mark.parametrize("garbage", ["", "x", "a.b", "a.b.c", "...", "eyJ.eyJ.", "Bearer x.y.z", "\u00e9.\u00e9.\u00e9",
                                     "a\ud800.b.c", "\x00", b64json([1]) + "." + b64json({}) + ".",
                                     b64json({"alg": "HS256", "kid": [1]}) + "." + b64json(claims()) + ".sig",
                                     b64(b"[" * 5000) + ".e30.", " " + hs256(claims())])
def test_garbage_strings(garbage: str, jwks_verifier: TokenVerifier) -> None:
    refused(HS, garbage)
    refused(jwks_verifier, garbage)


@pytest.mark.parametrize("value", [None, 0, 1.5, True, b"abc", ["x"], {"token": "x"}, object()])
def test_non_string_input(value: object) -> None:
    error = refused(HS, value)
    assert error.message == "a token is a non-empty string"


def test_bytes_of_a_valid_token_are_refused() -> None:
    refused(HS, hs256(claims()).encode())


def test_oversized_token() -> None:
    big = hs256(claims(pad="x" * 9000))
    assert len(big) > 8192
    refused(HS, big)
    fits = hs256(claims(pad="x" * 5000))
    assert len(fits) <= 8192
    assert HS.verify(fits) == Principal("alice", float(EXP))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(alphabet="abcXYZ019-_.=", max_size=300)))
def test_arbitrary_strings_are_client_errors(text: str) -> None:
    with pytest.raises(ClientError) as info:
        HS.verify(text)
    assert info.value.code in ("unauthorized", "token_expired")


# -- configuration -----------------------------------------------------------------------------------------

def test_exactly_one_of_secret_and_jwks(keys: Keys) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier()
    with pytest.raises(ValueError, match="exactly one"):
        TokenVerifier(secret=SECRET, jwks=keys.jwks)


def test_jwks_with_a_symmetric_key_is_rejected() -> None:
    oct_key = {"kty": "oct", "k": b64(SECRET.encode()), "kid": "hs", "alg": "HS256", "use": "sig"}
    with pytest.raises(ValueError, match="only RS256 and ES256"):
        TokenVerifier(jwks={"keys": [oct_key]})


def hs256_raw(payload_json: str) -> str:
    """An HS256 token whose payload is this exact JSON text (NaN and Infinity included, as json reads them)."""
    head = b64json({"alg": "HS256", "typ": "JWT"}) + "." + b64(payload_json.encode())
    sig = hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + b64(sig)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [f'"{EXP}"', "true", "NaN", "Infinity", "[1]", '{"t": 1}'])
def test_a_time_claim_that_is_not_a_number_is_refused(claim: str, value: str) -> None:
    """Regression: "exp": "1797225899" (a string) was accepted by PyJWT and never expired."""
    extra = f', "{claim}": {value}' if claim != "exp" else ""
    exp = value if claim == "exp" else str(EXP)
    token = hs256_raw(f'{{"sub": "alice", "exp": {exp}{extra}}}')
    refused(HS, token, "unauthorized")  # (true too: PyJWT reads it as 1, but it is no number, and no expiry)


def test_numeric_time_claims_are_accepted() -> None:
    token = hs256_raw(f'{{"sub": "alice", "exp": {EXP}.5, "nbf": {NOW - 10}, "iat": {NOW - 10}.25}}')
    assert HS.verify(token) == Principal("alice", EXP + 0.5)
