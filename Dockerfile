# annserve: one image for single nodes, shard nodes and routers (the environment decides the role).
FROM python:3.11-slim AS build
# hnswlib ships as a source distribution: it needs a C++ compiler to build its wheel.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY indexes ./indexes
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# libgomp: FAISS and numba's OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 annserve
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER annserve
WORKDIR /home/annserve
# numba caches compiled kernels next to the source unless told otherwise; the site-packages tree is read-only.
ENV ANNSERVE_HOST=0.0.0.0 \
    ANNSERVE_PORT=8000 \
    ANNSERVE_DATA_DIR=/data \
    NUMBA_CACHE_DIR=/home/annserve/.numba-cache
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["annserve", "serve"]
