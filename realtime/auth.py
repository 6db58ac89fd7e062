"""Tokens: JWT verification with pinned algorithms. Pure (PyJWT and cryptography only).

HS256 with a shared secret, or RS256/ES256 with keys from a JWKS (a file, or a URL fetched by the server
and handed over as a document). ``exp``, ``nbf``, ``aud`` and ``iss`` are checked when configured; the
algorithm is pinned to the kind of key (so ``alg: none`` and HS/RS confusion are refused), and the user is
the ``sub`` claim.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, cast

import jwt
from jwt import PyJWK, PyJWKSet

from realtime.errors import ClientError

ASYMMETRIC = ("RS256", "ES256")
MIN_SECRET_LENGTH = 32  # characters of an HS256 secret: a shorter one can be guessed offline from one token


@dataclass(frozen=True)
class Principal:
    user: str
    expires: float | None  # seconds since the epoch, from exp


class TokenVerifier:
    def __init__(self, *, secret: str | None = None, jwks: dict[str, Any] | None = None,
                 audience: str | None = None, issuer: str | None = None, leeway: float = 0.0) -> None:
        if (secret is None) == (jwks is None):
            raise ValueError("configure exactly one of an HS256 secret and a JWKS")
        self.secret = secret
        self.keys: dict[str | None, PyJWK] = {}
        if jwks is not None:
            for key in PyJWKSet.from_dict(jwks).keys:
                if key.algorithm_name not in ASYMMETRIC:
                    raise ValueError(f"JWKS key {key.key_id!r} uses {key.algorithm_name}; only RS256 and ES256")
                self.keys[key.key_id] = key
            if not self.keys:
                raise ValueError("the JWKS holds no usable key")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @classmethod
    def from_jwks_text(cls, text: str, **kwargs: Any) -> TokenVerifier:
        return cls(jwks=json.loads(text), **kwargs)

    def verify(self, token: object) -> Principal:
        """The principal of a valid token; :class:`ClientError` otherwise."""
        if not isinstance(token, str) or not token or len(token) > 8192 or not token.isascii():
            raise ClientError("unauthorized", "a token is a non-empty string")  # a JWT is base64url and dots
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise ClientError("unauthorized", "malformed token") from None
        alg = header.get("alg")
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None,
                   "verify_iss": self.issuer is not None}
        try:
            if self.secret is not None:
                if alg != "HS256":
                    raise ClientError("unauthorized", "token algorithm not accepted")
                claims = jwt.decode(token, self.secret, algorithms=["HS256"], audience=self.audience,
                                    issuer=self.issuer, leeway=self.leeway, options=cast(Any, options))
            else:
                key = self.keys.get(header.get("kid")) if header.get("kid") is not None or len(self.keys) != 1 \
                    else next(iter(self.keys.values()))
                if key is None or alg != key.algorithm_name:
                    raise ClientError("unauthorized", "token algorithm or key not accepted")
                claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=self.audience,
                                    issuer=self.issuer, leeway=self.leeway, options=cast(Any, options))
        except jwt.ExpiredSignatureError:
            # (the signature checked out first) PyJWT reads ``"exp": true`` as 1, long past: not a number, not
            # an expiry that a fresh token would cure
            if not _numeric_date(jwt.decode(token, options={"verify_signature": False}).get("exp")):
                raise ClientError("unauthorized", "the token's exp is not a number") from None
            raise ClientError("token_expired", "the token has expired") from None
        except jwt.PyJWTError:
            raise ClientError("unauthorized", "invalid token") from None
        for claim in ("exp", "nbf", "iat"):
            # RFC 7519 §2: a NumericDate is a JSON number. PyJWT also takes "1797225899" (a string), and
            # json reads NaN and Infinity: such a claim would never expire, so the token is refused.
            if claim in claims and not _numeric_date(claims[claim]):
                raise ClientError("unauthorized", f"the token's {claim} is not a number")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise ClientError("unauthorized", "the token has no subject")
        exp = claims.get("exp")
        try:
            expires = float(exp) if isinstance(exp, (int, float)) else None
        except OverflowError:  # an integer past the float range: never expires in practice
            expires = math.inf
        return Principal(sub, expires)


def _numeric_date(value: object) -> bool:
    """A JSON number that is a time: an integer, or a finite float (not a bool, a string, NaN or Infinity)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
