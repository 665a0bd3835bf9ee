# syntax=docker/dockerfile:1
# Both stages: Python 3.11 on Debian 12 (bookworm), the release named so the base does not move to the next one.
# For a reproducible image pin both by digest (python:3.11-slim-bookworm@sha256:..., as `docker buildx
# imagetools inspect python:3.11-slim-bookworm` prints it); no digest is written here, where none can be checked.
# Build stage: wheels for the sidecar and its dependencies (compilers stay here).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Runtime stage: the wheels only, a non-root user, no build tools.
FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home authz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/config/container.yaml /etc/authz-sidecar/config.yaml
USER 10001
EXPOSE 9191 9190
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9190/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["authz-sidecar"]
CMD ["serve", "--config", "/etc/authz-sidecar/config.yaml"]
