# pgtls-proxy container image: one file for docker and podman. `make image`
# builds it as pgtls-proxy:<version> and pgtls-proxy:latest; README.md
# ("Containers") gives the build and run commands for both engines.
#
# Base: Debian bookworm with Debian's own python3 (3.11), not python:3.12-slim.
# A Debian base can be made from Debian's package archive alone where no
# container registry is reachable (scripts/base-image.sh: debootstrap, then
# import under the name below), so the image builds wherever the project's
# tests run; Python 3.11 is the oldest version the project supports
# (requires-python >= 3.11) and the one CI tests on; and Debian's python3 gets
# Debian's security updates. Where a registry is reachable, docker pulls the
# official image of the same name.
#
# Config, certificates and keys are mounted, never baked in. The process runs
# as uid/gid 10001: keys must be readable by it and by no one else (mode 0600
# owned by 10001, or 0640 owned by root with group 10001). It writes only
# under $TMPDIR (/tmp): run with --read-only and a tmpfs there.
# In the config, set metrics.address: "0.0.0.0:9187" to scrape from outside
# (with metrics.tls, so that only scrapers with a client certificate get in;
# the HEALTHCHECK below then needs replacing: it probes plain HTTP),
# and workers: to the CPUs the container may use (the default counts the host's).

# ---- build: a venv holding the project and its dependencies
FROM docker.io/library/debian:bookworm-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv binutils \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/pgtls-proxy
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# Binary wheels only: no compiler here or anywhere in the image. Behind a
# TLS-inspecting proxy, hand its CA bundle in as the build secret "pip-ca"
# (`make image` does when PIP_CERT is set); it never lands in a layer.
# pip and setuptools leave the venv once it is filled: nothing installs at run
# time. The wheels' shared objects carry symbol tables: stripped, 5 MB less.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && /opt/pgtls-proxy/bin/pip install --only-binary=:all: --no-binary=pgtls-proxy . \
    && /opt/pgtls-proxy/bin/pip uninstall -y pip setuptools \
    && find /opt/pgtls-proxy -name '*.so' -exec strip --strip-unneeded {} + \
    && /opt/pgtls-proxy/bin/python -c 'import cryptography.x509, yaml, trio, pgtls_proxy.server' \
    && /opt/pgtls-proxy/bin/pgtls-proxy --help >/dev/null

# ---- run: Debian's python3 and the venv; no compiler, no pip, no sources
FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
       /var/log/apt /var/log/dpkg.log /usr/lib/python3.11/pydoc_data \
    && find /usr/share/doc -type f ! -name copyright -delete \
    && groupadd --system --gid 10001 pgtls-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgtls-proxy
COPY --from=build /opt/pgtls-proxy /opt/pgtls-proxy
ENV PATH=/opt/pgtls-proxy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGTLS_PROXY_CONFIG=/etc/pgtls-proxy/pgtls-proxy.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/etc/pgtls-proxy"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 6432 9187
# SIGTERM drains sessions for up to shutdown.drain_timeout (30 s by default):
# give `docker stop` / `podman stop` more than that (--stop-timeout, -t,
# stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
# No curl in the image: Python's urllib does the probe, on the metrics port
# inside the container (so the default metrics.address 127.0.0.1:9187 works).
# podman keeps a HEALTHCHECK only in docker-format images: `podman build --format docker`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["pgtls-proxy"]
CMD ["run"]
