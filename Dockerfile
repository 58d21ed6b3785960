# syntax=docker/dockerfile:1
# pgtls-proxy container. Config, certificates and keys are mounted, never baked in:
#   docker build -t pgtls-proxy .
#   docker run -d --name pgtls-proxy -v /etc/pgtls-proxy:/etc/pgtls-proxy:ro \
#     -p 6432:6432 -p 9187:9187 --stop-timeout 45 pgtls-proxy
#   docker kill -s HUP pgtls-proxy        # reload config, certificates and CRLs
# The process runs as uid/gid 10001: keys must be readable by it and by no one
# else (mode 0600 owned by 10001, or 0640 owned by root with group 10001).
# In the config, set metrics.address: "0.0.0.0:9187" to scrape from outside
# (with metrics.tls, so that only scrapers with a client certificate get in;
# the HEALTHCHECK below then needs replacing: it probes plain HTTP),
# and workers: to the CPUs the container may use (the default counts the host's).

# ---- build: the project and its dependencies as wheels
FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

# ---- run: only the wheels, installed; no compiler, no sources
FROM python:3.12-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 pgtls-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgtls-proxy
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/pgtls_proxy-*.whl
ENV PGTLS_PROXY_CONFIG=/etc/pgtls-proxy/pgtls-proxy.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/etc/pgtls-proxy"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 6432 9187
# SIGTERM drains sessions for up to shutdown.drain_timeout (30 s by default):
# give `docker stop` more than that (--stop-timeout, stop_grace_period).
STOPSIGNAL SIGTERM
# No curl in slim images: Python's urllib does the probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["pgtls-proxy"]
CMD ["run"]
