# syntax=docker/dockerfile:1
# pgtls-proxy container: config and certificates are mounted, never baked in.
#   docker run -v /etc/pgtls-proxy:/etc/pgtls-proxy:ro -p 6432:6432 -p 9187:9187 pgtls-proxy

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN groupadd --system pgtls && useradd --system --gid pgtls --no-create-home --shell /usr/sbin/nologin pgtls
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV PGTLS_PROXY_CONFIG=/etc/pgtls-proxy/pgtls-proxy.yaml \
    PYTHONUNBUFFERED=1
VOLUME ["/etc/pgtls-proxy"]
USER pgtls
EXPOSE 6432 9187
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9187/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["pgtls-proxy"]
CMD ["run"]
