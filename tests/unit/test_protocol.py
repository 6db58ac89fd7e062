"""realtime.protocol: the client protocol as a sans-I/O Session driven by a fake clock.

Every op, every error code the session produces, every close it decides (exact frames, exact close codes),
and a property test: no input makes ``receive`` raise or produce anything but the documented actions.
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
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime.auth import Principal, TokenVerifier
from realtime.errors import CLOSE_CODES, ERROR_CODES
from realtime.protocol import (
    UNHANDLED,
    Action,
    Authenticated,
    Close,
    PresenceQuery,
    Send,
    Session,
    SessionConfig,
    Subscribe,
    Sync,
    Typing,
    Unsubscribe,
)

SECRET = "protocol-test-secret-of-at-least-32-bytes"
T0 = float(int(time.time()))  # the fake clock starts at the real time: PyJWT checks exp against the real one
EXP = int(T0) + 3600
ACTION_TYPES = (Send, Close, Subscribe, Unsubscribe, Sync, Typing, PresenceQuery, Authenticated)


@pytest.fixture(autouse=True)
def _real_time_now() -> None:
    """The clock starts at the real time of each test (tokens made at import time would age during a long run)."""
    global T0, EXP
    T0 = float(int(time.time()))
    EXP = int(T0) + 3600


_EXP: Any = object()


def token(sub: str = "alice", exp: Any = _EXP, secret: str = SECRET, **claims: Any) -> str:
    if exp is _EXP:
        exp = EXP
    payload: dict[str, Any] = {"sub": sub, **claims}
    if exp is not None:
        payload["exp"] = exp
    return jwt.encode(payload, secret, algorithm="HS256")


VERIFIER = TokenVerifier(secret=SECRET)


class Clock:
    def __init__(self) -> None:
        self.t = [T0]

    def __call__(self) -> float:
        return self.t[0]

    def advance(self, seconds: float) -> None:
        self.t[0] += seconds


def make(config: SessionConfig | None = None, *, verifier: TokenVerifier | None = VERIFIER,
         clock: Clock | None = None) -> tuple[Session, Clock]:
    clock = clock or Clock()
    return Session(config or SessionConfig(), verifier, clock), clock


def authed(user: str = "alice", config: SessionConfig | None = None) -> tuple[Session, Clock]:
    session, clock = make(config)
    actions = session.receive(msg(op="auth", token=token(user)))
    assert isinstance(actions[0], Authenticated), actions
    return session, clock


def msg(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def sent(action: Action) -> dict[str, Any]:
    assert isinstance(action, Send), action
    value = orjson.loads(action.frame)
    assert isinstance(value, dict)
    return value


def only_frame(actions: list[Action]) -> dict[str, Any]:
    assert len(actions) == 1, actions
    return sent(actions[0])


def assert_error(actions: list[Action], code: str, ref: Any = None, message: str | None = None) -> None:
    """A single error frame with exactly op, code, message (and ref when echoed)."""
    value = only_frame(actions)
    keys = {"op", "code", "message"} | ({"ref"} if ref is not None else set())
    assert set(value) == keys, value
    assert value["op"] == "error"
    assert value["code"] == code
    assert code in ERROR_CODES
    assert isinstance(value["message"], str) and value["message"]
    if ref is not None:
        assert value["ref"] == ref
    if message is not None:
        assert value["message"] == message


def assert_close(actions: list[Action], code: int) -> Close:
    assert len(actions) == 1, actions
    action = actions[0]
    assert isinstance(action, Close), action
    assert action.code == code
    return action


# -- auth --------------------------------------------------------------------------------------------------

def test_auth_frame_authenticates_and_echoes_ref() -> None:
    session, _ = make()
    actions = session.receive(msg(op="auth", token=token("alice"), ref="r1"))
    assert actions[0] == Authenticated(Principal("alice", float(EXP)))
    assert len(actions) == 2
    assert sent(actions[1]) == {"op": "authenticated", "ref": "r1", "user": "alice", "expires": float(EXP)}
    assert session.authenticated and session.principal == Principal("alice", float(EXP))


@pytest.mark.parametrize("exp_offset", [0, 0.75])
def test_authenticated_expires_is_whole_seconds(exp_offset: float) -> None:
    """Regression: `expires` went out as a float (1795932825.0); the docs show an integer."""
    session, _ = make()
    actions = session.receive(msg(op="auth", token=token("alice", exp=EXP + exp_offset), ref="r1"))
    assert isinstance(actions[1], Send)
    assert f'"expires":{EXP}}}'.encode() in actions[1].frame, actions[1].frame


def test_auth_frame_with_an_infinite_expiry_sends_no_expires() -> None:
    session, _ = make()
    actions = session.receive(msg(op="auth", token=token("alice", exp=10**400)))
    assert actions[0] == Authenticated(Principal("alice", math.inf))
    assert sent(actions[1]) == {"op": "authenticated", "user": "alice"}


SAFE = 2**53  # integers below this are exact in every JSON reader (JavaScript's Number included)


def hs256_raw(payload_json: str) -> str:
    """An HS256 token whose payload is this exact JSON text (huge integers, NaN and Infinity included)."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(payload_json.encode())
    return head + "." + b64(hmac.new(SECRET.encode(), head.encode(), hashlib.sha256).digest())


EXPIRED, REFUSED = ("close", 4003), ("close", 4001)


@pytest.mark.parametrize(("claims", "outcome"), [
    # exp: accepted tokens say when they end, as a safe integer, or not at all
    ('"exp": 1e30', None), (f'"exp": {2**64}', None), (f'"exp": {2**63}', None), (f'"exp": {SAFE}', None),
    (f'"exp": {SAFE - 1}', SAFE - 1), ('"exp": 1' + "0" * 400, None), ('"exp": 1e300', None),
    ('"exp": {now}.5', "now"),
    # refused, with the documented error and close
    ('"exp": -1', EXPIRED), ('"exp": -1e30', EXPIRED), (f'"exp": -{2**64}', EXPIRED), ('"exp": 1e400', REFUSED),
    ('"exp": Infinity', REFUSED), ('"exp": -Infinity', REFUSED), ('"exp": NaN', REFUSED),
    ('"exp": "99999999999"', REFUSED), ('"exp": null', REFUSED), ('"exp": [1e30]', REFUSED),
    # nbf and iat, with a good exp
    ('"exp": {exp}, "nbf": 1e30', REFUSED), ('"exp": {exp}, "nbf": -1e30', "exp"),
    ('"exp": {exp}, "nbf": -1' + "0" * 400, "exp"), ('"exp": {exp}, "nbf": Infinity', REFUSED),
    ('"exp": {exp}, "nbf": "0"', REFUSED), ('"exp": {exp}, "iat": 1e30', REFUSED),
    ('"exp": {exp}, "iat": -1e30', "exp"), ('"exp": {exp}, "iat": NaN', REFUSED),
    (f'"exp": {{exp}}, "iat": {2**64}', REFUSED), ('"exp": {exp}, "iat": {{}}', REFUSED),
])
def test_hostile_time_claims_get_an_answer_never_an_exception(claims: str, outcome: Any) -> None:
    """Regression: a signed token with ``exp`` of 2**64 or more (1e30) made the ``authenticated`` reply fail in
    orjson (integer out of range), and the exception escaped ``receive``."""
    session, _ = make()
    payload = '{"sub": "alice", ' + claims.format(now=int(T0) + 100, exp=EXP) + "}"
    actions = session.receive(msg(op="auth", token=hs256_raw(payload), ref="r"))
    _check(actions)
    if isinstance(outcome, tuple):
        assert len(actions) == 2 and isinstance(actions[1], Close) and actions[1].code == outcome[1], actions
        assert sent(actions[0])["code"] == ("token_expired" if outcome == EXPIRED else "unauthorized")
        return
    assert isinstance(actions[0], Authenticated), actions
    reply = sent(actions[1])
    expected = {"now": int(T0) + 100, "exp": EXP}[outcome] if isinstance(outcome, str) else outcome
    assert reply.get("expires") == expected, reply
    assert "expires" not in reply or (type(reply["expires"]) is int and 0 <= reply["expires"] < SAFE), reply


time_claims = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80), st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2), st.just({}),
    st.integers(min_value=-3600, max_value=3600).map(lambda d: EXP + d),
)


@settings(max_examples=300, deadline=None)
@given(claims=st.fixed_dictionaries({}, optional={"exp": time_claims, "nbf": time_claims, "iat": time_claims}),
       header=st.booleans())
def test_receive_and_start_never_raise_on_signed_tokens_with_any_time_claims(claims: dict[str, Any],
                                                                             header: bool) -> None:
    """Any exp, nbf and iat, in a token signed with the right secret: a documented answer, never an exception
    (and an ``expires`` that every client reads exactly)."""
    payload = json.dumps({"sub": "alice", **claims})  # the stdlib: huge integers, NaN and Infinity as they come
    session, _ = make()
    if header:
        actions = session.start(hs256_raw(payload))
    else:
        actions = session.receive(msg(op="auth", token=hs256_raw(payload)))
    _check(actions)
    assert actions and isinstance(actions[0], (Authenticated, Send, Close)), actions
    for action in actions:
        if isinstance(action, Send):
            reply = sent(action)
            expires = reply.get("expires")
            assert expires is None or (type(expires) is int and 0 <= expires < SAFE), reply


class BrokenVerifier(TokenVerifier):
    """A verifier with a bug: it raises what no check foresaw."""

    def verify(self, token: object) -> Principal:
        raise RuntimeError("a bug")


def test_a_failure_nobody_foresaw_is_an_error_frame_never_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    """``receive`` and ``start`` never raise: what no check foresaw is refused (and logged, to be fixed)."""
    broken = BrokenVerifier(secret=SECRET)
    session, _ = make(verifier=broken)
    assert_error(session.receive(msg(op="auth", token="x.y.z", ref="r")), "bad_frame", "r", UNHANDLED)
    assert not session.closed and session.receive(msg(op="ping")) == [Send(b'{"op":"pong"}')]
    session, _ = make(verifier=broken)
    assert_close(session.start("x.y.z"), 4001)
    assert session.closed
    assert caplog.text.count("RuntimeError: a bug") == 2


def test_auth_refresh_same_user_updates_expiry() -> None:
    session, clock = authed("alice")
    later = EXP + 600
    actions = session.receive(msg(op="auth", token=token("alice", exp=later), ref=7))
    assert actions[0] == Authenticated(Principal("alice", float(later)))
    assert sent(actions[1]) == {"op": "authenticated", "ref": 7, "user": "alice", "expires": float(later)}
    clock.t[0] = float(EXP)  # the old expiry no longer closes the session
    session.rooms.add("public")
    assert session.tick() == []
    clock.t[0] = float(later)
    assert_close(session.tick(), 4003)


def test_auth_refresh_with_another_users_token_is_token_mismatch() -> None:
    session, _ = authed("alice")
    assert_error(session.receive(msg(op="auth", token=token("bob"), ref="x")), "token_mismatch", ref="x")
    assert session.principal is not None and session.principal.user == "alice"
    assert not session.closed


def test_bad_first_auth_sends_an_error_then_closes_4001() -> None:
    session, _ = make()
    actions = session.receive(msg(op="auth", token=token("alice", secret="another-secret-of-at-least-32-bytes!"),
                                  ref="a"))
    assert len(actions) == 2
    value = sent(actions[0])
    assert (value["op"], value["code"], value["ref"]) == ("error", "unauthorized", "a")
    assert isinstance(actions[1], Close) and actions[1].code == 4001
    assert session.closed and not session.authenticated
    assert session.receive(msg(op="ping")) == []
    assert session.tick() == []


def test_expired_first_auth_closes_4003() -> None:
    session, _ = make()
    actions = session.receive(msg(op="auth", token=token("alice", exp=int(T0) - 10)))
    assert len(actions) == 2
    assert sent(actions[0])["code"] == "token_expired"
    assert isinstance(actions[1], Close) and actions[1].code == 4003
    assert session.closed


def test_bad_refresh_keeps_the_session() -> None:
    session, _ = authed("alice")
    assert_error(session.receive(msg(op="auth", token="garbage", ref=1)), "unauthorized", ref=1)
    assert_error(session.receive(msg(op="auth", token=token("alice", exp=int(T0) - 10))), "token_expired")
    assert not session.closed
    assert session.principal == Principal("alice", float(EXP))


def test_auth_without_a_verifier_is_unauthorized() -> None:
    session, _ = make(verifier=None)
    assert_error(session.receive(msg(op="auth", token=token(), ref="q")), "unauthorized", ref="q",
                 message="token authentication is not configured")
    assert not session.closed


@pytest.mark.parametrize("bad", [None, 5, ["x"], {"t": 1}, "", "not.a.jwt"])
def test_auth_with_a_non_token_is_refused(bad: Any) -> None:
    session, _ = make()
    fields: dict[str, Any] = {"op": "auth"}
    if bad is not None:
        fields["token"] = bad
    actions = session.receive(msg(**fields))
    assert sent(actions[0])["code"] == "unauthorized"
    assert isinstance(actions[1], Close) and actions[1].code == 4001


# -- header token (start) ----------------------------------------------------------------------------------

def test_start_without_a_header_token_does_nothing() -> None:
    session, _ = make()
    assert session.start(None) == []
    assert not session.authenticated and not session.closed


def test_start_with_a_valid_header_token_authenticates() -> None:
    session, _ = make()
    assert session.start(token("carol")) == [Authenticated(Principal("carol", float(EXP)))]
    assert session.authenticated
    assert session.receive(msg(op="subscribe", rooms=["user:carol"], ref=1)) == [
        Subscribe(("user:carol",), None, 1)]


def test_start_with_an_expired_header_token_closes_4003() -> None:
    session, _ = make()
    close = assert_close(session.start(token("carol", exp=int(T0) - 1)), 4003)
    assert close.reason == "the token has expired"
    assert session.closed and not session.authenticated
    assert session.receive(msg(op="ping")) == []


@pytest.mark.parametrize("bad", [
    token("carol", secret="forged-secret-forged-secret-forged-secret"),
    "forged",
    token("carol")[:-4] + "AAAA",
])
def test_start_with_a_forged_header_token_closes_4001(bad: str) -> None:
    session, _ = make()
    assert_close(session.start(bad), 4001)
    assert session.closed and not session.authenticated


def test_start_with_a_header_token_but_no_verifier_closes_4001() -> None:
    session, _ = make(verifier=None)
    assert_close(session.start("anything"), 4001)
    assert session.closed
    assert session.receive(msg(op="ping")) == []


# -- subscribe / unsubscribe / sync ------------------------------------------------------------------------

def test_subscribe_without_since() -> None:
    session, _ = authed()
    actions = session.receive(msg(op="subscribe", rooms=["public", "post:p1", "public"], ref="s"))
    assert actions == [Subscribe(("public", "post:p1"), None, "s")]
    assert session.rooms == {"public", "post:p1"}


def test_subscribe_with_since() -> None:
    session, _ = authed()
    actions = session.receive(msg(op="subscribe", rooms=["hashtag:mongo", "author:bob"], since="123-4", ref=9))
    assert actions == [Subscribe(("hashtag:mongo", "author:bob"), "123-4", 9)]


def test_subscribe_with_null_since_is_a_plain_subscribe() -> None:
    session, _ = authed()
    assert session.receive(msg(op="subscribe", rooms=["public"], since=None)) == [Subscribe(("public",), None)]


def test_subscribe_own_user_room() -> None:
    session, _ = authed("alice")
    assert session.receive(msg(op="subscribe", rooms=["user:alice"])) == [Subscribe(("user:alice",), None)]


@pytest.mark.parametrize(("sub", "other"), [("65a1b2c3d4e5f60718293a4b", "~65a1b2c3d4e5f60718293a4b"),
                                            ("~65a1b2c3d4e5f60718293a4b", "65a1b2c3d4e5f60718293a4b"),
                                            ("42", "~42"), ("~42", "42")])
def test_a_subject_reads_its_own_user_room_only_never_the_room_of_an_id_of_another_type(sub: str, other: str) -> None:
    """A token's subject is a user id's text: the ObjectId user 65a1... and the string user "65a1..." (written
    ~65a1...), or the users 42 and "42", are different users with different rooms."""
    session, _ = authed(sub)
    assert session.receive(msg(op="subscribe", rooms=[f"user:{sub}"])) == [Subscribe((f"user:{sub}",), None)]
    assert_error(session.receive(msg(op="subscribe", rooms=[f"user:{other}"], ref="f")), "forbidden_room",
                 ref="f", message=f"not allowed to read user:{other}")
    assert session.rooms == {f"user:{sub}"}


def test_subscribe_another_users_room_is_forbidden_and_changes_nothing() -> None:
    session, _ = authed("alice")
    assert_error(session.receive(msg(op="subscribe", rooms=["public", "user:bob"], ref="f")), "forbidden_room",
                 ref="f", message="not allowed to read user:bob")
    assert session.rooms == set()


@pytest.mark.parametrize("rooms", [None, "public", {"public": 1}, [], 3])
def test_subscribe_rooms_not_a_non_empty_list_is_bad_frame(rooms: Any) -> None:
    session, _ = authed()
    fields: dict[str, Any] = {"op": "subscribe", "ref": "b"}
    if rooms is not None:
        fields["rooms"] = rooms
    assert_error(session.receive(msg(**fields)), "bad_frame", ref="b")


@pytest.mark.parametrize("room", ["", "Public", "post:", "post:a b", "user:" + "x" * 81, "hashtag:_x", "room",
                                  "post:p1\n", 5, None, ["public"], "post:" + "é"])
def test_subscribe_invalid_room_name_is_bad_room(room: Any) -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="subscribe", rooms=["public", room], ref=1)), "bad_room", ref=1)
    assert session.rooms == set()


def test_too_many_rooms_per_frame() -> None:
    session, _ = authed(config=SessionConfig(max_rooms_per_frame=3))
    assert_error(session.receive(msg(op="subscribe", rooms=[f"post:{i}" for i in range(4)])), "too_many_rooms",
                 message="at most 3 rooms per frame")
    assert session.receive(msg(op="subscribe", rooms=[f"post:{i}" for i in range(3)])) == [
        Subscribe(("post:0", "post:1", "post:2"), None)]


def test_too_many_rooms_per_connection() -> None:
    session, _ = authed(config=SessionConfig(max_rooms=3, max_rooms_per_frame=10))
    assert session.receive(msg(op="subscribe", rooms=["post:1", "post:2"])) == [Subscribe(("post:1", "post:2"), None)]
    # re-subscribing to rooms already held does not count twice
    assert session.receive(msg(op="subscribe", rooms=["post:1", "post:2", "post:3"])) == [
        Subscribe(("post:1", "post:2", "post:3"), None)]
    assert_error(session.receive(msg(op="subscribe", rooms=["post:4"], ref="m")), "too_many_rooms", ref="m",
                 message="at most 3 rooms per connection")
    assert session.rooms == {"post:1", "post:2", "post:3"}


@pytest.mark.parametrize("since", ["", "abc", "1", "1-", "-1", "1-2-3", "1.5-2", " 1-2", "\u0661-\u0662", 12, 1.5,
                                   ["1-2"], {"id": "1-2"}, True, f"{1 << 64}-0", "0-" + "9" * 40])
def test_subscribe_bad_since(since: Any) -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="subscribe", rooms=["public"], since=since, ref="z")), "bad_since", ref="z")
    assert session.rooms == set()


def test_unsubscribe() -> None:
    session, _ = authed()
    session.receive(msg(op="subscribe", rooms=["public", "post:1"]))
    actions = session.receive(msg(op="unsubscribe", rooms=["post:1", "post:2"], ref="u"))
    assert actions[0] == Unsubscribe(("post:1",))
    # Idempotent: the reply names every room of the frame, none of which is subscribed after it.
    assert sent(actions[1]) == {"op": "unsubscribed", "ref": "u", "rooms": ["post:1", "post:2"]}
    assert len(actions) == 2
    assert session.rooms == {"public"}


def test_unsubscribe_bad_rooms() -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="unsubscribe", rooms=[])), "bad_frame")
    assert_error(session.receive(msg(op="unsubscribe", rooms=["bad room"])), "bad_room")


def test_sync_replays_every_subscribed_room_sorted() -> None:
    session, _ = authed("alice")
    session.receive(msg(op="subscribe", rooms=["user:alice", "public", "post:9"]))
    assert session.receive(msg(op="sync", since="5-0", ref="y")) == [
        Sync(("post:9", "public", "user:alice"), "5-0", "y")]


def test_sync_without_rooms_is_not_subscribed() -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="sync", since="5-0", ref=3)), "not_subscribed", ref=3)


@pytest.mark.parametrize("since", [None, "x", 5])
def test_sync_bad_since(since: Any) -> None:
    session, _ = authed()
    session.receive(msg(op="subscribe", rooms=["public"]))
    fields: dict[str, Any] = {"op": "sync"}
    if since is not None:
        fields["since"] = since
    assert_error(session.receive(msg(**fields)), "bad_since")


# -- typing / presence / ping ------------------------------------------------------------------------------

def test_typing_in_a_post_room() -> None:
    session, _ = authed()
    assert session.receive(msg(op="typing", room="post:p1", ref="t")) == [Typing("post:p1")]


@pytest.mark.parametrize("room", ["public", "author:bob", "hashtag:x", "user:alice"])
def test_typing_outside_a_post_room_is_forbidden(room: str) -> None:
    session, _ = authed("alice")
    assert_error(session.receive(msg(op="typing", room=room)), "forbidden_room")


def test_typing_bad_room() -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="typing", room="post:a b", ref=2)), "bad_room", ref=2)
    assert_error(session.receive(msg(op="typing")), "bad_room")


def test_presence() -> None:
    session, _ = authed("alice")
    assert session.receive(msg(op="presence", room="post:p1", ref="p")) == [PresenceQuery("post:p1", "p")]
    assert session.receive(msg(op="presence", room="user:alice")) == [PresenceQuery("user:alice", None)]
    assert_error(session.receive(msg(op="presence", room="user:bob", ref="p")), "forbidden_room", ref="p")
    assert_error(session.receive(msg(op="presence", room=["public"])), "bad_room")


def test_ping_before_and_after_auth() -> None:
    session, _ = make()
    assert only_frame(session.receive(msg(op="ping", ref="k"))) == {"op": "pong", "ref": "k"}
    assert only_frame(session.receive(msg(op="ping"))) == {"op": "pong"}


# -- ref ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("ref", "echoed"), [
    ("r", "r"), ("x" * 64, "x" * 64), (0, 0), (-5, -5), (2**63 - 1, 2**63 - 1), (2**64 - 1, 2**64 - 1),
    (10**20, None),  # past 64 bits orjson reads a float
    ("x" * 65, None), (True, None), (False, None), (1.5, None), (None, None), (["r"], None), ({"r": 1}, None),
])
def test_ref_is_echoed_only_when_a_short_string_or_int(ref: Any, echoed: Any) -> None:
    session, _ = make()
    data = json.dumps({"op": "ping", "ref": ref}).encode()
    expected: dict[str, Any] = {"op": "pong"} if echoed is None else {"op": "pong", "ref": echoed}
    assert only_frame(session.receive(data)) == expected


def test_ref_on_errors_is_echoed() -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op="nope", ref="e1")), "unknown_op", ref="e1")
    assert_error(session.receive(msg(op="nope", ref="e" * 65)), "unknown_op")


# -- malformed frames --------------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"{", b"nope", b"{'op': 'ping'}", "{\"op\": \"ping\"", b"\xff\xfe",
                                  b'{"op":"ping"} {}', b"NaN", "\"\\ud800\"", "[" * 5000 + "]" * 5000])
def test_invalid_json_is_bad_json(data: str | bytes) -> None:
    session, _ = make()
    assert_error(session.receive(data), "bad_json", message="the frame is not valid JSON")


@pytest.mark.parametrize("data", [b"[]", b'[{"op":"ping"}]', b"1", b'"ping"', b"null", b"true", b"1.5"])
def test_non_object_json_is_bad_json(data: bytes) -> None:
    session, _ = make()
    assert_error(session.receive(data), "bad_json", message="the frame must be a JSON object")


@pytest.mark.parametrize("op", ["", "PING", "publish", "subscribe "])
def test_unknown_op(op: Any) -> None:
    session, _ = authed()
    assert_error(session.receive(msg(op=op, ref="o")), "unknown_op", ref="o", message=f"unknown op {op!r}")


@pytest.mark.parametrize("op", ["missing", None, 1, ["ping"], {"op": "ping"}, True])
def test_an_op_that_is_not_a_string_is_a_bad_frame(op: Any) -> None:
    """Regression: {"op": null} was answered "unknown op 'NoneType'"."""
    session, _ = authed()
    fields: dict[str, Any] = {"ref": "o"} if op == "missing" else {"ref": "o", "op": op}
    assert_error(session.receive(msg(**fields)), "bad_frame", ref="o",
                 message="op must be a string naming an operation")


def test_str_and_bytes_frames_are_the_same() -> None:
    session, _ = make()
    assert session.receive('{"op":"ping","ref":"é"}') == session.receive('{"op":"ping","ref":"é"}'.encode())


# -- authentication required -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    {"op": "subscribe", "rooms": ["public"]},
    {"op": "unsubscribe", "rooms": ["public"]},
    {"op": "sync", "since": "1-0"},
    {"op": "typing", "room": "post:1"},
    {"op": "presence", "room": "public"},
])
def test_ops_before_auth_are_unauthorized(fields: dict[str, Any]) -> None:
    session, _ = make()
    assert_error(session.receive(msg(**fields, ref="u")), "unauthorized", ref="u")
    assert not session.closed and session.rooms == set()


# -- anonymous mode ----------------------------------------------------------------------------------------

ANON = SessionConfig(allow_anonymous=True)


@pytest.mark.parametrize("room", ["public", "post:p1", "author:bob", "hashtag:python"])
def test_anonymous_may_read_public_rooms(room: str) -> None:
    session, _ = make(ANON)
    assert session.receive(msg(op="subscribe", rooms=[room], ref=1)) == [Subscribe((room,), None, 1)]
    assert session.receive(msg(op="presence", room=room)) == [PresenceQuery(room)]


def test_anonymous_may_not_read_user_rooms() -> None:
    session, _ = make(ANON)
    assert_error(session.receive(msg(op="subscribe", rooms=["public", "user:alice"], ref="a")), "forbidden_room",
                 ref="a", message="not allowed to read user:alice")
    assert_error(session.receive(msg(op="presence", room="user:alice")), "forbidden_room")
    assert session.rooms == set()


def test_anonymous_may_not_type() -> None:
    session, _ = make(ANON)
    assert_error(session.receive(msg(op="typing", room="post:p1")), "forbidden_room",
                 message="typing needs a token and a post room")


def test_anonymous_session_can_authenticate_then_read_its_user_room() -> None:
    session, _ = make(ANON)
    session.receive(msg(op="auth", token=token("dave")))
    assert session.receive(msg(op="subscribe", rooms=["user:dave"])) == [Subscribe(("user:dave",), None)]


def test_anonymous_session_has_no_auth_timeout_but_idles_out() -> None:
    session, clock = make(ANON)
    clock.advance(ANON.auth_timeout + 1)
    assert session.tick() == []
    clock.advance(ANON.idle_timeout)
    assert_close(session.tick(), 4011)


# -- rate limiting and flood -------------------------------------------------------------------------------

def test_rate_limited_over_the_bucket_then_refills() -> None:
    session, clock = make(SessionConfig(burst=3, rate=2.0, flood_close_after=10))
    for _ in range(3):
        assert only_frame(session.receive(msg(op="ping"))) == {"op": "pong"}
    assert_error(session.receive(msg(op="ping", ref="r")), "rate_limited",
                 message="too many messages; this one was dropped")  # not parsed: no ref
    clock.advance(0.5)  # one token at 2/s
    assert only_frame(session.receive(msg(op="ping"))) == {"op": "pong"}
    assert_error(session.receive(msg(op="ping")), "rate_limited")
    clock.advance(100)  # refill is capped at the burst
    for _ in range(3):
        assert only_frame(session.receive(msg(op="ping"))) == {"op": "pong"}
    assert_error(session.receive(msg(op="ping")), "rate_limited")


def test_rate_limited_messages_change_nothing() -> None:
    session, _ = authed(config=SessionConfig(burst=2, rate=1.0))  # auth took one token
    session.receive(msg(op="ping"))
    assert_error(session.receive(msg(op="subscribe", rooms=["public"])), "rate_limited")
    assert session.rooms == set()


def test_flood_closes_after_consecutive_limited_messages() -> None:
    session, _ = make(SessionConfig(burst=2, rate=1.0, flood_close_after=3))
    session.receive(msg(op="ping"))
    session.receive(msg(op="ping"))
    assert_error(session.receive(msg(op="ping")), "rate_limited")
    assert_error(session.receive(msg(op="ping")), "rate_limited")
    close = assert_close(session.receive(msg(op="ping")), 4009)
    assert close.reason == "flood"
    assert session.closed
    assert session.receive(msg(op="ping")) == []


def test_flood_count_resets_after_an_accepted_message() -> None:
    session, clock = make(SessionConfig(burst=1, rate=1.0, flood_close_after=3))
    session.receive(msg(op="ping"))
    for _ in range(2):
        assert_error(session.receive(msg(op="ping")), "rate_limited")
    clock.advance(1.0)
    assert only_frame(session.receive(msg(op="ping"))) == {"op": "pong"}
    for _ in range(2):
        assert_error(session.receive(msg(op="ping")), "rate_limited")
    assert not session.closed
    assert_close(session.receive(msg(op="ping")), 4009)


def test_default_flood_close_after_fifty() -> None:
    session, _ = make()
    cfg = SessionConfig()
    for _ in range(cfg.burst):
        assert only_frame(session.receive(b"{}"))["code"] == "bad_frame"
    for _ in range(cfg.flood_close_after - 1):
        assert_error(session.receive(b"{}"), "rate_limited")
    assert_close(session.receive(b"{}"), 4009)


def test_bad_json_still_takes_a_token() -> None:
    session, _ = make(SessionConfig(burst=1, rate=1.0))
    assert_error(session.receive(b"{"), "bad_json")
    assert_error(session.receive(b"{"), "rate_limited")


# -- tick --------------------------------------------------------------------------------------------------

def test_auth_timeout() -> None:
    session, clock = make()
    clock.advance(9.999)
    assert session.tick() == []
    clock.advance(0.001)
    close = assert_close(session.tick(), 4002)
    assert close.reason == "auth_timeout"
    assert session.closed
    assert session.tick() == []
    assert session.receive(msg(op="auth", token=token())) == []


def test_auth_timeout_counts_from_connect_not_from_the_last_message() -> None:
    session, clock = make()
    clock.advance(9)
    session.receive(msg(op="ping"))
    clock.advance(1)
    assert_close(session.tick(), 4002)


def test_no_auth_timeout_once_authenticated() -> None:
    session, clock = authed()
    session.receive(msg(op="subscribe", rooms=["public"]))
    clock.advance(60)
    assert session.tick() == []


def test_token_expired_at_exp() -> None:
    session, clock = authed()
    session.receive(msg(op="subscribe", rooms=["public"]))
    clock.t[0] = EXP - 0.001
    assert session.tick() == []
    clock.t[0] = float(EXP)
    close = assert_close(session.tick(), 4003)
    assert close.reason == "token_expired"
    assert session.closed


def test_token_expired_from_a_header_token() -> None:
    session, clock = make()
    session.start(token("eve", exp=int(T0) + 30))
    session.receive(msg(op="subscribe", rooms=["public"]))
    clock.advance(30)
    assert_close(session.tick(), 4003)


def test_idle_close_without_rooms() -> None:
    session, clock = authed()
    clock.advance(299)
    session.receive(msg(op="ping"))  # a message resets the idle time
    clock.advance(299)
    assert session.tick() == []
    clock.advance(1)
    close = assert_close(session.tick(), 4011)
    assert close.reason == "idle"


def test_no_idle_close_with_rooms() -> None:
    session, clock = authed()
    session.receive(msg(op="subscribe", rooms=["public"]))
    clock.advance(1000)
    assert session.tick() == []
    session.receive(msg(op="unsubscribe", rooms=["public"]))
    clock.advance(300)
    assert_close(session.tick(), 4011)


def test_close_codes_are_the_documented_ones() -> None:
    assert {n: CLOSE_CODES[n].code for n in ("unauthorized", "auth_timeout", "token_expired", "flood", "idle")} == {
        "unauthorized": 4001, "auth_timeout": 4002, "token_expired": 4003, "flood": 4009, "idle": 4011}


# -- property: no input makes receive raise ----------------------------------------------------------------

OPS = ["auth", "subscribe", "unsubscribe", "sync", "typing", "presence", "ping", "", "PING", "error"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=50))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=5)
                           | st.dictionaries(st.text(max_size=10), kids, max_size=5), max_leaves=30)
rooms_like = st.one_of(
    st.lists(st.sampled_from(["public", "post:p1", "author:a", "hashtag:tag", "user:alice", "user:bob", "bad room",
                              "hashtag:é", "post:" + "x" * 90]), max_size=60),
    json_values,
)
since_like = st.one_of(st.sampled_from(["0-0", "1-2", f"{2**64 - 1}-{2**64 - 1}", f"{2**64}-0", "1-2-3", "-"]),
                       json_values)
frames = st.fixed_dictionaries(
    {"op": st.one_of(st.sampled_from(OPS), json_values)},
    optional={"rooms": rooms_like, "room": st.one_of(st.sampled_from(["post:p1", "user:bob", "public"]), json_values),
              "since": since_like, "ref": json_values,
              "token": st.one_of(st.sampled_from([token("alice"), token("bob"), token("alice", exp=1)]),
                                 json_values)},
)


def _deep(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


def _deep_fields(depth: int, op: str) -> str:
    rooms, since = _deep(depth, '"public"'), _deep(depth, '"1-0"')
    return '{"op":"' + op + '","rooms":' + rooms + ',"since":' + since + "}"


raw_inputs = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v)),  # stdlib json: huge ints, NaN and Infinity, which orjson refuses
    frames.map(lambda f: json.dumps(f, ensure_ascii=False)),
    frames.map(lambda f: json.dumps(f).encode()),
    st.builds(_deep, st.integers(0, 3000), st.sampled_from(["", "1", '{"op":"ping"}'])),
    st.builds(_deep_fields, st.integers(0, 1500), st.sampled_from(OPS)),
)


def _check(actions: list[Action]) -> None:
    assert isinstance(actions, list)
    known_closes = {c.code for c in CLOSE_CODES.values()}
    for action in actions:
        assert isinstance(action, ACTION_TYPES), action
        if isinstance(action, Send):
            value = orjson.loads(action.frame)
            assert isinstance(value, dict) and isinstance(value.get("op"), str), value
            if value["op"] == "error":
                assert value["code"] in ERROR_CODES
                assert value["message"] != UNHANDLED, "an input reached the last-resort guard: a check is missing"
        elif isinstance(action, Close):
            assert action.code in known_closes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=st.lists(raw_inputs, min_size=1, max_size=8), anonymous=st.booleans(),
       start=st.sampled_from([None, "", "junk", token("alice")]), have_verifier=st.booleans())
def test_receive_never_raises(inputs: list[str | bytes], anonymous: bool, start: str | None,
                              have_verifier: bool) -> None:
    session, clock = make(SessionConfig(allow_anonymous=anonymous, burst=1000),
                          verifier=VERIFIER if have_verifier else None)
    _check(session.start(start))
    for data in inputs:
        actions = session.receive(data)
        _check(actions)
        if any(isinstance(a, Close) for a in actions):
            assert session.closed
        clock.advance(1)
        _check(session.tick())
    if session.closed:
        assert session.receive(b'{"op":"ping"}') == []


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(frames, min_size=1, max_size=20))
def test_receive_never_raises_on_well_formed_json(frames: list[dict[str, Any]]) -> None:
    session, _ = make(SessionConfig(burst=5, rate=0.0, flood_close_after=8))
    for fields in frames:
        try:
            data = orjson.dumps(fields)
        except TypeError:  # an integer past 64 bits: the stdlib writes it, orjson then reads a float
            data = json.dumps(fields).encode()
        _check(session.receive(data))
