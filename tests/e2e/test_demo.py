"""The browser client and the demo: ``/client/realtime.js``, ``/demo``, and the demo-only write API.

The write API exists only with ``REALTIME_DEMO=true``; its likes and comments go to MongoDB and reach
WebSocket clients as events through the watcher, like any producer's. The last test drives the demo page in
headless Chromium (Debian's ``chromium``, driven by ``playwright-core`` from tests/browser).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from realtime.config import ConfigError
from realtime.server import config as server_config
from tests.conftest import TIMEOUT, RedisServer
from tests.e2e.serverkit import SECRET, Opener, ServerProcess, Stack, running_stack, token, until
from tests.integration.watcherkit import wait_for

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
DEMO_ENV = {"REALTIME_DEMO": "true", "REALTIME_PRESENCE_ROOMS": "post:,public"}
BROWSER = ROOT / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def http(server: ServerProcess, method: str, path: str, body: Any = None, bearer: str | None = None,
         **extra: str) -> tuple[int, dict[str, str], bytes]:
    """One request; the status, the headers (lowercase names) and the body, whatever the status."""
    data = None if body is None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"} if data is not None else {}
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    request = urllib.request.Request(server.http + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.fixture(scope="module")
def demo(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, tmp_path_factory.mktemp("demo"), "demo", servers=1, deep=True,
                       server_env=DEMO_ENV) as st:
        yield st


@pytest.fixture(scope="module")
def plain(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A server without REALTIME_DEMO (but with MONGODB_URI: the demo stays off all the same)."""
    with running_stack(redis_server, tmp_path_factory.mktemp("plain"), "plain", servers=1, deep=True) as st:
        yield st


def post(st: Stack, post_id: str, **fields: Any) -> None:
    st.db.posts.insert_one({"_id": post_id, "authorId": "ada", "text": f"post {post_id}", **fields})
    st.published(post_id)


# -- files ---------------------------------------------------------------------------------------------------

def test_the_client_module_is_served_with_or_without_the_demo(demo: Stack, plain: Stack) -> None:
    source = (ROOT / "realtime" / "web" / "realtime.js").read_bytes()
    for st in (demo, plain):
        status, headers, body = http(st.servers[0], "GET", "/client/realtime.js")
        assert status == 200
        assert headers["content-type"].startswith("text/javascript")
        assert headers["access-control-allow-origin"] == "*"  # importable from an app on another origin
        assert body == source
        assert b"export class RealtimeClient" in body and b"innerHTML" not in body
        status, _, body = http(st.servers[0], "GET", "/client/realtime.js", If_None_Match=headers["etag"])
        assert status == 304 and body == b""


def test_the_demo_page_and_its_files(demo: Stack) -> None:
    server = demo.servers[0]
    status, headers, body = http(server, "GET", "/demo")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]  # no inline script: data stays text
    assert b'src="/demo/demo.js"' in body and b"/demo/demo.css" in body
    assert b"http://" not in body and b"https://" not in body  # no external resources
    for path, kind in (("/demo/demo.js", "text/javascript"), ("/demo/demo.css", "text/css")):
        status, headers, body = http(server, "GET", path)
        assert status == 200 and headers["content-type"].startswith(kind), path
    _, _, script = http(server, "GET", "/demo/demo.js")
    assert b"innerHTML" not in script and b"insertAdjacentHTML" not in script


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/client/realtime.js", "/demo",
                                  "/demo/demo.js", "/demo/demo.css", "/demo/api/feed",
                                  "/poll?rooms=public&wait=0", "/poll?rooms=user:eve&wait=0",
                                  "/poll?rooms=bad%20room", "/sse?rooms=public", "/sse?rooms=user:bob"])
def test_head_is_answered_wherever_get_is(demo: Stack, path: str) -> None:
    """HEAD gives GET's status and headers, without a body (it answered 405); as eve."""
    server = demo.servers[0]
    if path == "/sse?rooms=public":  # a GET would stream: its status and type, as the stream starts
        get_status, get_headers = 200, {"content-type": "text/event-stream"}
    else:
        get_status, get_headers, _ = http(server, "GET", path, bearer=token("eve"))
    status, headers, body = http(server, "HEAD", path, bearer=token("eve"))
    assert (status, body) == (get_status, b""), (path, status)
    assert headers.get("content-type") == get_headers.get("content-type"), path


def test_the_feed_is_newest_first_by_creation_time(demo: Stack) -> None:
    """Regression: the demo feed ordered posts by _id, so ids that do not follow time (a client's own, or
    another machine's) put old posts first."""
    now = dt.datetime.now(dt.UTC)
    for post_id, minutes in (("order-zz-old", -30), ("order-aa-new", -1), ("order-mm-mid", -10)):
        post(demo, post_id, createdAt=now + dt.timedelta(minutes=minutes))
    status, _, body = http(demo.servers[0], "GET", "/demo/api/feed")
    assert status == 200
    ids = [p["id"] for p in orjson.loads(body)["posts"] if p["id"].startswith("order-")]
    assert ids == ["order-aa-new", "order-mm-mid", "order-zz-old"]


def test_without_realtime_demo_the_demo_answers_404(plain: Stack) -> None:
    server = plain.servers[0]
    bearer = token("u1")
    for method, path, body in (("GET", "/demo", None), ("GET", "/demo/demo.js", None),
                               ("GET", "/demo/api/token?user=eve", None), ("GET", "/demo/api/feed", None),
                               ("POST", "/demo/api/like", {"postId": "p1"}),
                               ("POST", "/demo/api/comment", {"postId": "p1", "text": "hi"})):
        status, _, _ = http(server, method, path, body, bearer)
        assert status == 404, (method, path, status)


def test_realtime_demo_needs_a_secret_and_mongodb() -> None:
    base = {"REALTIME_DEMO": "true", "REALTIME_JWT_SECRET": SECRET, "MONGODB_URI": "mongodb://127.0.0.1:1/"}
    assert server_config.load(base).demo
    assert not server_config.load({**base, "REALTIME_DEMO": "false"}).demo
    with pytest.raises(ConfigError, match="REALTIME_JWT_SECRET"):
        server_config.load({"REALTIME_DEMO": "true", "REALTIME_ALLOW_ANONYMOUS": "true",
                            "MONGODB_URI": "mongodb://127.0.0.1:1/"})
    with pytest.raises(ConfigError, match="MONGODB_URI"):
        server_config.load({"REALTIME_DEMO": "true", "REALTIME_JWT_SECRET": SECRET})


# -- the API -----------------------------------------------------------------------------------------------------

def test_token_is_short_lived_and_signed_with_the_servers_secret(demo: Stack) -> None:
    status, _, body = http(demo.servers[0], "GET", "/demo/api/token?user=eve")
    assert status == 200
    reply = orjson.loads(body)
    claims = jwt.decode(reply["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == reply["user"] == "eve"
    assert 0 < claims["exp"] - time.time() <= 900 + 5
    for bad in ("", "a b", "x" * 33, "<script>", "u:1"):
        status, _, body = http(demo.servers[0], "GET", "/demo/api/token?user=" + urllib.request.quote(bad))
        assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_user", bad


def test_writes_need_a_valid_token_and_a_public_post(demo: Stack) -> None:
    server = demo.servers[0]
    post(demo, "guarded")
    demo.db.posts.insert_one({"_id": "hidden", "authorId": "ada", "text": "private", "visibility": "private"})
    assert http(server, "POST", "/demo/api/like", {"postId": "guarded"})[0] == 401
    assert http(server, "POST", "/demo/api/like", {"postId": "guarded"}, "not-a-jwt")[0] == 401
    assert http(server, "POST", "/demo/api/like", {"postId": "guarded"}, token("eve", secret="x" * 40))[0] == 401
    assert http(server, "POST", "/demo/api/like", {"postId": "nope"}, token("eve"))[0] == 404
    assert http(server, "POST", "/demo/api/like", {"postId": "hidden"}, token("eve"))[0] == 404
    assert http(server, "POST", "/demo/api/like", {"postId": 5}, token("eve"))[0] == 400
    assert http(server, "POST", "/demo/api/comment", {"postId": "guarded", "text": "  "}, token("eve"))[0] == 400
    assert http(server, "POST", "/demo/api/comment", {"postId": "guarded", "text": "x" * 501}, token("eve"))[0] == 400
    assert demo.db.likes.count_documents({"postId": "guarded"}) == 0
    assert demo.db.comments.count_documents({"postId": "guarded"}) == 0


def test_posts_with_null_empty_or_unknown_visibility_are_private_in_the_demo(demo: Stack) -> None:
    """Regression: the demo's feed and write API took ``visibility: null`` (and an array holding "public") for
    public, unlike the watcher's routing."""
    server = demo.servers[0]
    demo.db.posts.insert_many([
        {"_id": "zzz0-public", "authorId": "ada", "text": "p", "visibility": "public"},
        {"_id": "zzz1-null", "authorId": "ada", "text": "n", "visibility": None},
        {"_id": "zzz2-empty", "authorId": "ada", "text": "e", "visibility": ""},
        {"_id": "zzz3-array", "authorId": "ada", "text": "a", "visibility": ["public"]},
    ])
    for post_id in ("zzz1-null", "zzz2-empty", "zzz3-array"):
        assert http(server, "POST", "/demo/api/like", {"postId": post_id}, token("eve"))[0] == 404, post_id
    status, _, body = http(server, "GET", "/demo/api/feed", None, token("eve"))
    assert status == 200
    ids = [p["id"] for p in orjson.loads(body)["posts"]]
    assert "zzz0-public" in ids and not {"zzz1-null", "zzz2-empty", "zzz3-array"} & set(ids), ids


def test_the_demo_names_posts_and_users_by_their_ids_texts(demo: Stack) -> None:
    """Regression: the feed gave the string post "424242" and the post 424242 one id, and a like of either was
    written for, and counted over, both; a demo user "4242" had the token of the user 4242."""
    server = demo.servers[0]
    now = dt.datetime.now(dt.UTC)  # the newest: first in the feed
    demo.db.posts.insert_many([{"_id": "424242", "authorId": "ada", "text": "a string id", "createdAt": now},
                               {"_id": 424242, "authorId": "ada", "text": "a number id", "createdAt": now}])
    status, _, body = http(server, "POST", "/demo/api/like", {"postId": "~424242"}, token("eve"))
    assert status == 200 and orjson.loads(body)["likes"] == 1, body
    assert [(type(d["postId"]), d["userId"]) for d in demo.db.likes.find({"postId": {"$in": ["424242", 424242]}})] \
        == [(str, "eve")]
    status, _, body = http(demo.servers[0], "GET", "/demo/api/feed", None, token("eve"))
    posts = {p["id"]: (p["text"], p["likes"], p["liked"]) for p in orjson.loads(body)["posts"]}
    assert posts["~424242"] == ("a string id", 1, True) and posts["424242"] == ("a number id", 0, False), posts
    for bad in ("4242", "0", "-1", "65a1b2c3d4e5f60718293a4b"):
        status, _, body = http(server, "GET", "/demo/api/token?user=" + bad)
        assert status == 400 and orjson.loads(body)["error"]["code"] == "bad_user", bad
    assert http(server, "GET", "/demo/api/token?user=007")[0] == 200  # not a number's text: a name


async def test_like_toggles_and_comments_reach_a_websocket_client(demo: Stack, clients: Opener) -> None:
    server = demo.servers[0]
    await asyncio.to_thread(post, demo, "live1")
    _, _, body = await asyncio.to_thread(http, server, "GET", "/demo/api/token?user=eve")
    minted = orjson.loads(body)["token"]
    watcher = await clients(server, bearer=minted, rooms=["post:live1"])  # the minted token is accepted

    async def call(path: str, payload: dict[str, Any]) -> dict[str, Any]:
        status, _, reply = await asyncio.to_thread(http, server, "POST", path, payload, minted)
        assert status in (200, 201), reply
        result: dict[str, Any] = orjson.loads(reply)
        return result

    liked = await call("/demo/api/like", {"postId": "live1"})
    assert liked == {"postId": "live1", "userId": "eve", "liked": True, "changed": True, "likes": 1}
    await watcher.got_events(1, "post:liked")
    unliked = await call("/demo/api/like", {"postId": "live1"})  # a toggle
    assert unliked["liked"] is False and unliked["likes"] == 0
    await watcher.got_events(2, "post:unliked")
    same = await call("/demo/api/like", {"postId": "live1", "liked": False})  # a set: nothing to do
    assert same["changed"] is False
    made = await call("/demo/api/comment", {"postId": "live1", "text": "<b>hi</b> there"})
    await watcher.got_events(3, "comment:added")

    got = [(e["type"], e["data"].get("likes"), e["data"].get("userId")) for e in watcher.events()]
    assert got == [("post:liked", 1, "eve"), ("post:unliked", 0, "eve"), ("comment:added", None, "eve")]
    added = watcher.events()[2]["data"]
    assert added["id"] == made["id"] and added["postId"] == "live1" and added["text"] == "<b>hi</b> there"


async def test_feed_is_a_snapshot_with_the_position_to_resume_from(demo: Stack, clients: Opener) -> None:
    server = demo.servers[0]
    await asyncio.to_thread(post, demo, "feed1", hashtags=["Cats"], secret="never published")
    demo.db.likes.insert_one({"_id": "feed1-like", "postId": "feed1", "userId": "eve"})
    demo.db.comments.insert_one({"_id": "feed1-c", "postId": "feed1", "userId": "bob", "text": "nice"})
    # wait until the watcher has published those too: a sentinel written after them
    await asyncio.to_thread(demo.published, demo.sentinel())
    status, _, body = await asyncio.to_thread(http, server, "GET", "/demo/api/feed", None, token("eve"))
    assert status == 200
    feed = orjson.loads(body)
    first = next(p for p in feed["posts"] if p["id"] == "feed1")
    assert first["likes"] == 1 and first["liked"] is True and first["hashtags"] == ["Cats"]
    assert "secret" not in first  # the allow-list of post fields, as in events
    assert [(c["userId"], c["text"]) for c in first["comments"]] == [("bob", "nice")]
    # events after the snapshot's position are replayed from it, and only those
    demo.db.comments.insert_one({"_id": "feed1-c2", "postId": "feed1", "userId": "bob", "text": "later"})
    await asyncio.to_thread(demo.published, demo.sentinel())
    client = await clients(server, "eve")
    await client.subscribe(["post:feed1"], since=feed["position"])
    await until(lambda: [e["data"]["id"] for e in client.events()] == ["feed1-c2"], "the replay after the snapshot",
                TIMEOUT * 3, client)


# -- the client module --------------------------------------------------------------------------------------------

def test_the_client_module_with_a_fake_server() -> None:
    """realtime.js's unit tests (node --test, a fake WebSocket and fetch): backoff, resume and de-duplication,
    close codes, token refresh, the fallback to long-polling and back, presence, typing, optimistic likes."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    result = subprocess.run(["node", "--test", "client.test.mjs"], cwd=BROWSER, capture_output=True, text=True,
                            timeout=TIMEOUT * 12, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


# -- a real browser -----------------------------------------------------------------------------------------------

def _browser_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BROWSER / "node_modules" / "playwright-core").is_dir():
        return f"playwright-core is not installed: run `npm ci` in {BROWSER} (scripts/test does)"
    if not Path(CHROMIUM).exists():
        return f"chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does)"
    return None


async def test_the_demo_page_in_headless_chromium(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two pages: a like in one shows in the other; typing, comments and presence cross over; the server
    restarts and the page reconnects and catches up; with WebSockets blocked, a page works over long-polling;
    posts far below the fold (whose post:{id} rooms the page never joined) are edited, deleted and made
    private, and the page shows it (regression: it kept showing posts deleted where it had not looked)."""
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    with running_stack(redis_server, tmp_path, "browser", servers=1, deep=True, server_env=DEMO_ENV) as st:
        server = st.servers[0]
        await asyncio.to_thread(post, st, "b1")
        out: list[str] = []
        env = dict(os.environ, CHROMIUM=CHROMIUM, REALTIME_TEST_TIMEOUT=str(TIMEOUT))
        proc = await asyncio.create_subprocess_exec(
            "node", str(BROWSER / "demo.mjs"), server.http, str(tmp_path), cwd=BROWSER, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert proc.stdin is not None and proc.stdout is not None

        def restart() -> None:
            """The server goes away; meanwhile a new post and a like are written; it comes back."""
            assert server.stop() == 0, server.log()
            st.db.likes.insert_one({"_id": "b1-carol", "postId": "b1", "userId": "carol"})
            post(st, "b2")
            server.start()
            wait_for(server.ready, "the server to be ready again", timeout=TIMEOUT * 3)

        def fill() -> None:
            """More posts than a screen holds: b1, b2 and f1 end up far below the fold."""
            for n in range(1, 16):
                post(st, f"f{n}")

        def change() -> None:
            st.db.posts.update_one({"_id": "b2"}, {"$set": {"text": "edited where nobody looked"}})
            st.db.posts.delete_one({"_id": "b1"})
            st.db.posts.update_one({"_id": "f1"}, {"$set": {"visibility": "private"}})
            st.published(st.sentinel())

        replies = {"STOP": (restart, b"STARTED\n"), "FILL": (fill, b"FILLED\n"), "CHANGE": (change, b"CHANGED\n")}
        try:
            async with asyncio.timeout(TIMEOUT * 30):
                while line := (await proc.stdout.readline()).decode():
                    out.append(line.rstrip())
                    if line.strip() in replies:
                        action, reply = replies[line.strip()]
                        await asyncio.to_thread(action)
                        proc.stdin.write(reply)
                        await proc.stdin.drain()
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        log = "\n".join(out)
        print(log)
        assert code == 0, f"the browser test failed (screenshots in {tmp_path}):\n{log}"
        assert out[-1] == "OK", log
