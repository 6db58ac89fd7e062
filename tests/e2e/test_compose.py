"""The container deployment: ``compose.yaml``, ``deploy/nginx.conf``, the ``Dockerfile`` and its health check.

``docker compose config`` (or ``docker-compose config``: a real Compose implementation, not a schema of
our own) must accept ``compose.yaml`` and render the stack the docs describe; without the required secret
it must refuse. No Docker engine is needed for that. Where no implementation is installed the test fails
with the command that installs one (``.ci/run`` installs Debian's ``docker-compose``).

The same facts are checked again on the file itself with PyYAML, with what only the source shows: the
shared ``x-realtime-env``, every variable documented in docs/configuration.md, and the load balancer's
WebSocket, SSE and long-poll settings.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from realtime.server.addresses import client_address, parse_networks
from realtime.server.transports import MAX_WAIT, SSE_HEARTBEAT

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"

SECRET = "compose-test-secret-0123456789abcdefghij"
INSTALL_HINT = (
    "no Compose implementation found: neither `docker compose` nor `docker-compose` runs here. "
    "Install one, e.g. `apt-get install --no-install-recommends docker-compose` (Debian's, as .ci/run does) "
    "or the Docker Compose v2 plugin, then run the tests again."
)

SERVICES = {"mongo", "redis", "setup", "watcher-1", "watcher-2", "server-1", "server-2", "lb"}
WATCHERS = ("watcher-1", "watcher-2")
SERVERS = ("server-1", "server-2")
REALTIME_SERVICES = ("setup", *WATCHERS, *SERVERS)
EXPECTED_DEPENDS = {
    "setup": {"mongo": "service_healthy"},
    "watcher-1": {"setup": "service_completed_successfully", "mongo": "service_healthy", "redis": "service_healthy"},
    "watcher-2": {"setup": "service_completed_successfully", "mongo": "service_healthy", "redis": "service_healthy"},
    "server-1": {"mongo": "service_healthy", "redis": "service_healthy"},
    "server-2": {"mongo": "service_healthy", "redis": "service_healthy"},
    "lb": {"server-1": "service_healthy", "server-2": "service_healthy"},
}


# -- reading a compose model, as written or as rendered by `config` ---------------------------------------

def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``(host_ip, published, target)`` of each port, from the short (``"ip:80:80/tcp"``) or long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published") in (None, ""):
                continue
            out.append((str(port.get("host_ip", "")), int(port["published"]), int(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        if len(parts) < 2:
            continue
        out.append((parts[-3] if len(parts) > 2 else "", int(parts[-2]), int(parts[-1])))
    return out


def conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):  # the short syntax: started, not healthy
        return dict.fromkeys(depends, "service_started")
    return {name: str((spec or {}).get("condition", "service_started")) for name, spec in depends.items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def has_healthcheck(service: dict[str, Any]) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return bool(test) and not check.get("disable") and test not in (["NONE"], "NONE")


def check_stack(config: dict[str, Any]) -> None:
    """What both the file and the rendered configuration must say."""
    services = config["services"]
    assert set(services) == SERVICES

    assert services["mongo"]["image"] == "mongo:7"
    mongo_cmd = command(services["mongo"])
    assert mongo_cmd[mongo_cmd.index("--replSet") + 1] == "rs0"
    assert services["redis"]["image"] == "redis:7"
    assert services["lb"]["image"] == "nginx:1.27"

    images = {services[name]["image"] for name in REALTIME_SERVICES}
    assert len(images) == 1, f"the realtime services run one image, got {images}"
    for name in REALTIME_SERVICES:
        assert "build" in services[name], f"{name} is built from the repository"
    assert command(services["setup"]) == ["mongo-setup"]
    assert services["setup"].get("restart", "no") == "no"

    # Two watchers: the same configuration apart from their names.
    envs = [environment(services[name]) for name in WATCHERS]
    for name in WATCHERS:
        assert command(services[name]) == ["watch"]
    names = [env.pop("REALTIME_WATCHER_NAME") for env in envs]
    assert len(set(names)) == 2
    assert envs[0] == envs[1]
    assert envs[0]["REALTIME_WATCHER_HTTP"].endswith(":9100")
    assert not envs[0]["REALTIME_WATCHER_HTTP"].startswith("127.")

    # Two servers, the same configuration.
    server_envs = [environment(services[name]) for name in SERVERS]
    for name in SERVERS:
        assert command(services[name]) == ["serve"]
    assert server_envs[0] == server_envs[1]
    assert server_envs[0]["REALTIME_LISTEN"] == "0.0.0.0:8000"

    # Behind nginx the servers trust the X-Forwarded-For it appends (from Docker's private networks), so the
    # per-address limit counts clients, not nginx; safe because no server port is published (below).
    trusted = parse_networks(server_envs[0]["REALTIME_TRUSTED_PROXIES"])
    assert client_address("172.18.0.5", ["198.51.100.7"], trusted) == "198.51.100.7"
    assert client_address("198.51.100.7", ["203.0.113.1"], trusted) == "198.51.100.7"

    # Everything talks to the same MongoDB replica set and Redis.
    for name in REALTIME_SERVICES:
        env = environment(services[name])
        assert env["MONGODB_URI"] == "mongodb://mongo:27017/?replicaSet=rs0", name
        assert env["REDIS_URL"].startswith("redis://redis:6379"), name
        assert env["MONGODB_DB"] == "app", name

    # Only the load balancer is published (8080), and MongoDB on the host's loopback at most.
    published = {name: published_ports(service) for name, service in services.items() if published_ports(service)}
    assert set(published) <= {"lb", "mongo"}, published
    assert [(published_port, target) for _, published_port, target in published["lb"]] == [(8080, 80)]
    for host_ip, _, _ in published.get("mongo", []):
        assert host_ip == "127.0.0.1"

    # Health checks everywhere but on the one-shot setup; watchers and servers on their /healthz.
    for name, service in services.items():
        assert has_healthcheck(service) is (name != "setup"), name
    for name, port in [*((w, 9100) for w in WATCHERS), *((s, 8000) for s in SERVERS)]:
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in test and "urllib" in test, name
    assert "rs.initiate" in " ".join(services["mongo"]["healthcheck"]["test"])

    for name, expected in EXPECTED_DEPENDS.items():
        assert conditions(services[name]) == expected, name
    for name in ("mongo", "redis"):
        assert not conditions(services[name])

    # The servers outlast their own graceful shutdown before Docker kills them.
    for name in SERVERS:
        grace = int(environment(services[name]).get("REALTIME_SHUTDOWN_GRACE", "10"))
        assert seconds(services[name]["stop_grace_period"]) > grace


def seconds(duration: str | int) -> float:
    """Seconds in a Compose or nginx duration: ``15s``, ``1m30s``, ``3600s``, ``75``."""
    if isinstance(duration, int) or str(duration).isdigit():
        return float(duration)
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


# -- a real Compose implementation ---------------------------------------------------------------------

def compose_command() -> list[str] | None:
    """``docker compose`` (v2) when the plugin is there, else ``docker-compose``; None without either."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60, check=False)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    found = compose_command()
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def compose_config(compose: list[str], tmp_path: Path, env_file: str) -> subprocess.CompletedProcess[str]:
    """``compose config`` of compose.yaml, with only ``env_file`` (not the caller's environment or .env)."""
    path = tmp_path / "compose.env"
    path.write_text(env_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "REALTIME_"))}
    args = [*compose, "--env-file", str(path), "-f", str(COMPOSE_FILE), "-p", "realtime", "config"]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_compose_config_renders_the_stack(compose: list[str], tmp_path: Path) -> None:
    done = compose_config(compose, tmp_path, f"REALTIME_JWT_SECRET={SECRET}\n")
    assert done.returncode == 0, f"{' '.join(compose)} config failed:\n{done.stderr}"
    rendered = yaml.safe_load(done.stdout)
    check_stack(rendered)
    for name in SERVERS:
        assert environment(rendered["services"][name])["REALTIME_JWT_SECRET"] == SECRET
    for name in WATCHERS:
        assert "REALTIME_JWT_SECRET" not in environment(rendered["services"][name])
    mounts = " ".join(str(v) if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}"
                      for v in rendered["services"]["lb"].get("volumes", []))
    assert f"{NGINX_CONF}:/etc/nginx/conf.d/default.conf" in mounts


def test_compose_config_refuses_to_run_without_the_secret(compose: list[str], tmp_path: Path) -> None:
    done = compose_config(compose, tmp_path, "")
    assert done.returncode != 0, "compose.yaml must not start without REALTIME_JWT_SECRET"
    assert "set REALTIME_JWT_SECRET" in done.stderr + done.stdout


# -- the files themselves ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def documented_variables() -> set[str]:
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", CONFIGURATION_DOC.read_text()))


def test_compose_file_structure(source: dict[str, Any]) -> None:
    check_stack(source)
    secret = environment(source["services"]["server-1"])["REALTIME_JWT_SECRET"]
    assert secret.startswith("${REALTIME_JWT_SECRET:?"), "the secret is required, with no default"


def test_compose_shares_the_realtime_environment(source: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    assert "x-realtime-env: &realtime-env" in text
    shared = {str(k): str(v) for k, v in source["x-realtime-env"].items()}
    assert {"MONGODB_URI", "MONGODB_DB", "REDIS_URL"} <= set(shared)
    for name in REALTIME_SERVICES:
        env = environment(source["services"][name])
        assert {k: env.get(k) for k in shared} == shared, f"{name} lacks the shared environment"


def test_compose_uses_only_documented_variables(source: dict[str, Any]) -> None:
    documented = documented_variables()
    text = COMPOSE_FILE.read_text()
    interpolated = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", text.replace("$$", "")))
    assert interpolated == {"REALTIME_JWT_SECRET"}
    assert interpolated <= documented
    for name in REALTIME_SERVICES:
        undocumented = set(environment(source["services"][name])) - documented
        assert not undocumented, f"{name} sets variables that docs/configuration.md does not list: {undocumented}"


def nginx_block(text: str, header: str) -> str:
    """The body of the first ``header { ... }`` block (blocks here hold no nested braces)."""
    match = re.search(re.escape(header) + r"\s*\{([^{}]*)\}", text)
    assert match is not None, f"no `{header}` block in {NGINX_CONF.name}"
    return match.group(1)


def directives(body: str) -> list[list[str]]:
    lines = (line.split("#", 1)[0] for line in body.splitlines())
    flat = re.sub(r"[{}]", ";", " ".join(lines))
    return [stmt.split() for stmt in flat.split(";") if stmt.strip()]


def directive(body: str, name: str) -> list[list[str]]:
    return [d[1:] for d in directives(body) if d[0] == name]


def test_nginx_balances_both_servers_and_proxies_websockets(source: dict[str, Any]) -> None:
    text = NGINX_CONF.read_text()
    server = text[text.index("server {"):]
    upstream = nginx_block(text, "upstream realtime")
    backends = {args[0] for args in directive(upstream, "server")}
    assert backends == {f"{name}:8000" for name in SERVERS}
    assert ["80"] in directive(server.split("location", 1)[0], "listen")

    # The map that turns a client's Upgrade into "Connection: upgrade".
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade\s*\{[^}]*default\s+upgrade;", text)

    ws = nginx_block(text, "location = /ws")
    assert directive(ws, "proxy_pass") == [["http://realtime"]]
    assert ["1.1"] in directive(ws, "proxy_http_version")
    headers = {args[0].lower(): args[1] for args in directive(ws, "proxy_set_header")}
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"  # the client's address, for its limit
    assert seconds(directive(ws, "proxy_read_timeout")[0][0]) >= 600

    sse = nginx_block(text, "location = /sse")
    assert directive(sse, "proxy_pass") == [["http://realtime"]]
    assert directive(sse, "proxy_buffering") == [["off"]]
    assert seconds(directive(sse, "proxy_read_timeout")[0][0]) > 2 * SSE_HEARTBEAT

    poll = nginx_block(text, "location = /poll")
    assert directive(poll, "proxy_pass") == [["http://realtime"]]
    assert seconds(directive(poll, "proxy_read_timeout")[0][0]) > MAX_WAIT + 10

    # Keepalive upstream connections need HTTP/1.1 and no "Connection: close" on every proxied location.
    assert ["1.1"] in directive(server.split("location", 1)[0], "proxy_http_version")
    for header in ("location /", "location = /sse", "location = /poll"):
        block = nginx_block(text, header)
        assert ["Connection", '""'] in directive(block, "proxy_set_header"), header


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    instructions = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
                    for line in lines]
    froms = [arg for op, arg in instructions if op == "FROM"]
    assert froms and froms[0].startswith("python:3.12-slim")
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    # From the lock only (docs/dependencies.md): hashes checked, no resolver, the build backend locked too.
    assert installs and all("--no-deps" in arg for arg in installs), installs
    assert any("--require-hashes" in arg and "-r /tmp/requirements.txt" in arg for arg in installs), installs
    assert all("--no-build-isolation" in arg for arg in installs if "/tmp/src" in arg), installs
    assert ("COPY", "requirements/run.txt /tmp/requirements.txt") in instructions
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["realtime"]') in instructions
    assert ("CMD", '["serve"]') in instructions
    exposed = {port for op, arg in instructions if op == "EXPOSE" for port in arg.split()}
    assert exposed == {"8000", "9100"}
    checks = [arg for op, arg in instructions if op == "HEALTHCHECK"]
    assert len(checks) == 1 and "python" in checks[0] and "healthcheck.py" in checks[0]

    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", "tests/e2e/mongosh/node_modules", ".mypy_cache", ".pytest_cache"} <= ignored
    assert "**/node_modules" in ignored or "node_modules" in ignored


# -- the health checks, run against a stand-in HTTP endpoint -----------------------------------------------

class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    _Health.status = 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _run(args: list[str], env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REALTIME_")}
    return subprocess.run(args, env={**clean, **env}, capture_output=True, timeout=60, check=False).returncode


def test_image_healthcheck_follows_the_listen_variables(endpoint: http.server.ThreadingHTTPServer) -> None:
    port = endpoint.server_address[1]
    script = [sys.executable, str(HEALTHCHECK)]
    closed = "127.0.0.1:1"
    # A server (REALTIME_LISTEN on the wildcard) and a watcher (REALTIME_WATCHER_HTTP), as the image sets them.
    assert _run(script, {"REALTIME_LISTEN": f"0.0.0.0:{port}", "REALTIME_WATCHER_HTTP": closed}) == 0
    assert _run(script, {"REALTIME_LISTEN": closed, "REALTIME_WATCHER_HTTP": f"0.0.0.0:{port}"}) == 0
    assert _run(script, {"REALTIME_LISTEN": closed, "REALTIME_WATCHER_HTTP": "off"}) == 1
    _Health.status = 503
    assert _run(script, {"REALTIME_LISTEN": f"127.0.0.1:{port}", "REALTIME_WATCHER_HTTP": "off"}) == 1


def test_compose_healthchecks_fail_on_an_unhealthy_answer(
        source: dict[str, Any], endpoint: http.server.ThreadingHTTPServer) -> None:
    port = endpoint.server_address[1]
    for name, own in (("server-1", 8000), ("watcher-1", 9100)):
        test = source["services"][name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"]
        args = [sys.executable, *(arg.replace(f"127.0.0.1:{own}", f"127.0.0.1:{port}") for arg in test[2:])]
        _Health.status = 200
        assert _run(args, {}) == 0, name
        _Health.status = 503
        assert _run(args, {}) != 0, name
