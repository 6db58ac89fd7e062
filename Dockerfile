# The realtime image: one image for every role. The command picks it:
#   docker run IMAGE serve         the push server (the default)
#   docker run IMAGE watch         a watcher (run two: leader and standby)
#   docker run IMAGE mongo-setup   once per cluster: pre-images and indexes
# Configuration is the environment (docs/configuration.md); compose.yaml runs the whole stack.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The dependencies from the lock (docs/dependencies.md): exact versions, every wheel's hash checked, no
# resolver. A layer of its own, so that a change to the sources alone does not reinstall them.
COPY requirements/run.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps --only-binary :all: -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project from a throw-away copy of the sources, built by the locked setuptools; only the package stays.
COPY pyproject.toml README.md /tmp/src/
COPY realtime /tmp/src/realtime
COPY watchers /tmp/src/watchers
RUN pip install --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src && pip check

COPY deploy/healthcheck.py /usr/local/lib/realtime/healthcheck.py

RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/realtime \
        --shell /usr/sbin/nologin realtime
USER 10001:10001
WORKDIR /home/realtime

# The code defaults to loopback; in a container the ports must be reachable from other containers.
ENV REALTIME_LISTEN=0.0.0.0:8000 \
    REALTIME_WATCHER_HTTP=0.0.0.0:9100

# 8000: realtime serve (/ws, /poll, /sse, /healthz, /readyz, /metrics); 9100: realtime watch (/healthz, /readyz, /metrics)
EXPOSE 8000 9100

# GET /healthz of whichever of the two is running (REALTIME_LISTEN, REALTIME_WATCHER_HTTP); python's urllib.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/realtime/healthcheck.py"]

ENTRYPOINT ["realtime"]
CMD ["serve"]
