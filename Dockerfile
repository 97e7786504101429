# annserve: one image for single nodes, shard nodes and routers; the environment decides the role
# (ANNSERVE_SHARD_URLS set: a router; ANNSERVE_SHARD_INDEX/COUNT set: a shard node).
#
# Build stage: the full Debian image has the C++ compiler that hnswlib's source distribution needs,
# so no package is installed by hand (and none has to be pinned). The runtime stage only gets wheels:
# faiss-cpu brings its own OpenMP runtime, numba its own threading layer.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY indexes ./indexes
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# A fixed numeric uid, so Kubernetes' runAsUser/fsGroup and the volume's owner agree with it.
RUN useradd --create-home --uid 10001 --user-group annserve \
    && mkdir /data && chown 10001:10001 /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /home/annserve
# numba caches compiled kernels next to its source unless told otherwise; site-packages is not ours.
ENV ANNSERVE_HOST=0.0.0.0 \
    ANNSERVE_PORT=8000 \
    ANNSERVE_WORKERS=1 \
    ANNSERVE_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/home/annserve/.numba-cache \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8000
# /healthz: alive (a router, or a node whose collections loaded); readiness is /readyz (Kubernetes probes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-m", "annserve.cluster.pod", "health"]
# One process, one uvicorn worker per container (ANNSERVE_WORKERS=1 above; the service's own default is one
# per core): scale with containers (routers, shard nodes) and their CPU limits; a node that owns its cores
# may run `ANNSERVE_WORKERS=0` (one worker per core over the same data directory, README Configuration).
CMD ["annserve", "serve"]
