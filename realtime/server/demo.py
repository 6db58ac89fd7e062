"""The demo: ``/demo`` and a small write API, only with ``REALTIME_DEMO=true``. Development only, never production.

Producers normally write to MongoDB themselves and nobody calls the server to emit anything. The demo page
needs a way to like and comment from a browser, and a token, so with ``REALTIME_DEMO=true`` the server adds:

* ``GET /demo`` (and ``/demo/demo.js``, ``/demo/demo.css``): the page;
* ``GET /demo/api/token?user=<name>``: a short-lived HS256 token for **any** user name, signed with
  ``REALTIME_JWT_SECRET`` (it is a demo: anyone can be anyone);
* ``GET /demo/api/feed``: recent public posts with their like counts, whether the caller liked each, their
  latest comments, and ``position``: the event id to subscribe ``since`` so that nothing after the snapshot
  is missed;
* ``POST /demo/api/like {"postId", "liked"?}``: like or unlike as the token's user (toggles without
  ``liked``), written to MongoDB's ``likes``, from where the watcher publishes ``post:liked``/``post:unliked``;
* ``POST /demo/api/comment {"postId", "text"}``: a comment, written to ``comments``.

Writes authenticate with ``Authorization: Bearer <jwt>`` checked by the server's own verifier.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import re
import secrets
import time
from typing import Any

import jwt
import orjson
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.exceptions import RedisError
from sanic import Request, Sanic
from sanic.response import HTTPResponse, raw

from realtime.auth import Principal
from realtime.errors import ClientError
from realtime.ids import id_text, id_value, is_id_text
from realtime.server.config import ServerConfig
from realtime.server.web import Asset
from watchers.mapping import is_public, public_query
from watchers.payload import pick

log = logging.getLogger("realtime.server")

USER = re.compile(r"[A-Za-z0-9_.@-]{1,32}")
TOKEN_TTL = 900  # seconds: short-lived; the page asks for a new one before it expires
MAX_BODY = 16 * 1024
MAX_COMMENT = 500
FEED_POSTS = 20
FEED_COMMENTS = 10

# The page: its own files only (no inline script or style), data in text nodes only.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class DemoError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(body: Any, status: int = 200) -> HTTPResponse:
    return raw(orjson.dumps(body), status=status, content_type="application/json",
               headers={"Cache-Control": "no-store"})


def _error(exc: DemoError) -> HTTPResponse:
    return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status)


def _principal(request: Request, *, required: bool) -> Principal | None:
    header = request.headers.get("authorization")
    if not header:
        if required:
            raise DemoError(401, "unauthorized", "send Authorization: Bearer <token> (GET /demo/api/token)")
        return None
    scheme, _, token = header.partition(" ")
    verifier = request.app.ctx.state.verifier
    if scheme.lower() != "bearer" or not token.strip() or verifier is None:
        raise DemoError(401, "unauthorized", "send Authorization: Bearer <token>")
    try:
        principal: Principal = verifier.verify(token.strip())
    except ClientError as exc:
        raise DemoError(401, exc.code, exc.message) from None
    return principal


def _user(principal: Principal) -> Any:
    """The user's id, whose text the token's subject is (realtime/ids.py): what the demo writes as userId."""
    if not is_id_text(principal.user):
        raise DemoError(403, "bad_user", "the token's subject is not a user id")
    return id_value(principal.user)


def _body(request: Request) -> dict[str, Any]:
    if len(request.body) > MAX_BODY:
        raise DemoError(413, "too_big", f"at most {MAX_BODY} bytes")
    try:
        body = orjson.loads(request.body or b"null")
    except orjson.JSONDecodeError:
        raise DemoError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise DemoError(400, "bad_json", "the body must be a JSON object")
    return body


def _post_id(body: dict[str, Any]) -> str:
    """The post's id, as events write it (realtime/ids.py)."""
    post_id = body.get("postId")
    if not isinstance(post_id, str) or not is_id_text(post_id):
        raise DemoError(400, "bad_frame", "postId must be a post id")
    return post_id


def _like_id(post_id: str, user: str) -> str:
    """One like per post and user (a unique _id), for any post id's text."""
    return "demo-like-" + hashlib.sha256(f"{post_id}\n{user}".encode()).hexdigest()[:32]


def _new_id(kind: str) -> str:
    # roughly in time order, as the demo producer's ids are
    return f"{kind}{int(time.time())}{secrets.token_hex(4)}"


class Demo:
    def __init__(self, cfg: ServerConfig) -> None:
        assert cfg.demo_mongodb_uri is not None
        self.cfg = cfg
        self.m = cfg.mapping
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.page = Asset.load("demo.html")
        self.js = Asset.load("demo.js")
        self.css = Asset.load("demo.css")

    @property
    def db(self) -> Any:
        assert self.client is not None
        return self.client[self.cfg.database]

    async def _post(self, post_id: str) -> dict[str, Any]:
        # public as the watcher routes it (null, "" or an unknown visibility is private)
        post = await self.db[self.m.posts].find_one(
            {"$and": [{"_id": id_value(post_id)}, public_query(self.m)]},
            {"_id": 1, self.m.fields.visibility: 1})
        if post is None or not is_public(post, self.m):
            raise DemoError(404, "not_found", "no such public post")
        return dict(post)

    # -- handlers --------------------------------------------------------------------------------------------

    def token(self, request: Request) -> HTTPResponse:
        user = request.args.get("user", "")
        if not USER.fullmatch(user):
            raise DemoError(400, "bad_user", "user must be 1 to 32 letters, digits or _.@-")
        if id_text(user) != user:  # the token's subject is the text of the user's id: a string here
            raise DemoError(400, "bad_user", "user must not read as a number or an ObjectId")
        try:
            ttl = int(request.args.get("ttl", TOKEN_TTL))
        except ValueError:
            raise DemoError(400, "bad_ttl", "ttl must be a number of seconds") from None
        ttl = max(10, min(ttl, 3600))
        now = int(time.time())
        auth = self.cfg.auth
        claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl}
        if auth.audience:
            claims["aud"] = auth.audience
        if auth.issuer:
            claims["iss"] = auth.issuer
        assert auth.secret is not None
        token = jwt.encode(claims, auth.secret, algorithm="HS256")
        return _json({"token": token, "user": user, "expires": now + ttl})

    async def feed(self, request: Request) -> HTTPResponse:
        principal = _principal(request, required=False)
        state = request.app.ctx.state
        position = (await state.history.last_id()).decode()  # before the reads: events after it are replayed
        f = self.m.fields
        # Newest first by creation time (ids need not follow it: a client's own ids, ObjectIds of other
        # machines); posts without createdAt come last, newest id first.
        docs = [d async for d in self.db[self.m.posts].find(public_query(self.m))
                .sort([("createdAt", -1), ("_id", -1)]).limit(FEED_POSTS) if is_public(d, self.m)]

        async def one(doc: dict[str, Any]) -> dict[str, Any]:
            # ids as events write them (realtime/ids.py), so the page joins the rooms its events go to
            post = doc["_id"]
            likes = await self.db[self.m.likes].count_documents({f.post_id: post})
            liked = principal is not None and is_id_text(principal.user) and await self.db[self.m.likes].find_one(
                {f.post_id: post, f.user_id: id_value(principal.user)}, {"_id": 1}) is not None
            comments = [c async for c in self.db[self.m.comments].find({f.post_id: post})
                        .sort("_id", -1).limit(FEED_COMMENTS)]
            limits = {"max_string": self.m.max_string, "max_depth": self.m.max_depth}
            return {
                **pick(doc, self.m.post_fields, **limits),
                "id": id_text(post),
                "authorId": id_text(doc.get(f.author_id)),
                "likes": likes,
                "liked": liked,
                "comments": [{**pick(c, self.m.comment_fields, **limits), "id": id_text(c["_id"]),
                              "postId": id_text(c.get(f.post_id)),
                              "userId": id_text(c.get(f.user_id, c.get(f.author_id)))}
                             for c in reversed(comments)],
            }

        docs = [d for d in docs if id_text(d["_id"]) is not None]  # a post without an id's text has no events
        posts = await asyncio.gather(*(one(d) for d in docs))
        return _json({"posts": posts, "position": position, "user": principal.user if principal else None})

    async def like(self, request: Request) -> HTTPResponse:
        principal = _principal(request, required=True)
        assert principal is not None
        body = _body(request)
        post_id = _post_id(body)
        want = body.get("liked")
        if want is not None and not isinstance(want, bool):
            raise DemoError(400, "bad_frame", "liked must be true or false")
        post = await self._post(post_id)
        f = self.m.fields
        likes = self.db[self.m.likes]
        mine = {f.post_id: post["_id"], f.user_id: _user(principal)}
        existing = await likes.find_one(mine, {"_id": 1})
        if want is None:
            want = existing is None  # a toggle
        changed = False
        if want and existing is None:
            try:
                await likes.insert_one({"_id": _like_id(post_id, principal.user), f.post_id: post["_id"],
                                        f.user_id: _user(principal), "createdAt": dt.datetime.now(dt.UTC)})
                changed = True
            except DuplicateKeyError:
                pass  # a concurrent request liked it first
        elif not want and existing is not None:
            changed = (await likes.delete_many(mine)).deleted_count > 0
        count = await likes.count_documents({f.post_id: post["_id"]})
        return _json({"postId": post_id, "userId": principal.user, "liked": want, "changed": changed,
                      "likes": count})

    async def comment(self, request: Request) -> HTTPResponse:
        principal = _principal(request, required=True)
        assert principal is not None
        body = _body(request)
        post_id = _post_id(body)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DemoError(400, "bad_frame", "text must be a non-empty string")
        text = text.strip()
        if len(text) > MAX_COMMENT:
            raise DemoError(400, "bad_frame", f"at most {MAX_COMMENT} characters")
        post = await self._post(post_id)
        f = self.m.fields
        comment_id = _new_id("c")
        await self.db[self.m.comments].insert_one({"_id": comment_id, f.post_id: post["_id"],
                                                   f.user_id: _user(principal), "text": text,
                                                   "createdAt": dt.datetime.now(dt.UTC)})
        return _json({"id": comment_id, "postId": post_id, "userId": principal.user, "text": text}, 201)


def register(app: Sanic[Any, Any], cfg: ServerConfig) -> None:
    """The demo's routes and its MongoDB client; called from ``create_app`` only with ``REALTIME_DEMO=true``."""
    demo = Demo(cfg)

    @app.before_server_start
    async def demo_start(app: Sanic[Any, Any]) -> None:
        log.warning("REALTIME_DEMO is on: /demo/api mints tokens for any user and writes as any user; "
                    "development only, never production")
        demo.client = AsyncMongoClient(cfg.demo_mongodb_uri, serverSelectionTimeoutMS=5000,
                                       appname="realtime-server demo")

    @app.before_server_stop
    async def demo_stop(app: Sanic[Any, Any]) -> None:
        if demo.client is not None:
            await demo.client.close()

    async def page(request: Request) -> HTTPResponse:
        return demo.page.response(request, {"Content-Security-Policy": PAGE_CSP, "Referrer-Policy": "no-referrer"})

    async def page_js(request: Request) -> HTTPResponse:
        return demo.js.response(request)

    async def page_css(request: Request) -> HTTPResponse:
        return demo.css.response(request)

    async def token(request: Request) -> HTTPResponse:
        try:
            return demo.token(request)
        except DemoError as exc:
            return _error(exc)

    def api(handler: Any) -> Any:
        async def wrapped(request: Request) -> HTTPResponse:
            try:
                response: HTTPResponse = await handler(request)
                return response
            except DemoError as exc:
                return _error(exc)
            except (PyMongoError, RedisError, OSError) as exc:
                log.warning("demo API: %s: %s", type(exc).__name__, exc)
                return _error(DemoError(503, "unavailable", "MongoDB or Redis is unreachable; retry"))
        return wrapped

    app.add_route(page, "/demo", methods=["GET", "HEAD"], name="demo_page")
    app.add_route(page_js, "/demo/demo.js", methods=["GET", "HEAD"], name="demo_js")
    app.add_route(page_css, "/demo/demo.css", methods=["GET", "HEAD"], name="demo_css")
    app.add_route(token, "/demo/api/token", methods=["GET", "HEAD"], name="demo_token")
    app.add_route(api(demo.feed), "/demo/api/feed", methods=["GET", "HEAD"], name="demo_feed")
    app.add_route(api(demo.like), "/demo/api/like", methods=["POST"], name="demo_like")
    app.add_route(api(demo.comment), "/demo/api/comment", methods=["POST"], name="demo_comment")
