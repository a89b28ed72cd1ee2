# The study in a container. Build and run (GPU; data and logs are volumes, made by you first so that
# they are yours, and written as you with --user):
#   docker build -t vit-lm-study .
#   mkdir -p data logs && docker run --gpus all --user "$(id -u):$(id -g)" \
#     -v "$PWD/data:/app/data" -v "$PWD/logs:/app/logs" vit-lm-study
# The default torch wheel is a CUDA 13 build (NVIDIA driver 580 or newer, compute capability 7.5 and
# up). For an older driver or a V100, install a CUDA 12 build from PyTorch's own index:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t vit-lm-study .
# BASE_IMAGE may also be a bare Debian 12: Python is then installed from Debian's packages.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DEVICE=cuda

# A C compiler and Python's headers: torch.compile builds kernels at run time (Triton on a GPU,
# Inductor's C++ on a CPU). Debian's python3 and ca-certificates on bases that lack them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && if ! python3 -c "import venv, ensurepip" 2>/dev/null || [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates; \
    fi \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
COPY requirements.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" \
            "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"; \
        grep -v '^torch' requirements.txt > /tmp/rest.txt && pip install --no-cache-dir -r /tmp/rest.txt; \
    else \
        pip install --no-cache-dir -r requirements.txt; \
    fi

COPY *.py *.json runs.sh entrypoint.sh README.md ./
COPY docs/ ./docs/
RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /app/data /app/logs \
    && chown trainer:trainer /app/data /app/logs
USER 1000:1000
VOLUME ["/app/data", "/app/logs"]
ENTRYPOINT ["bash", "/app/entrypoint.sh"]
CMD ["bash", "runs.sh"]
