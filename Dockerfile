# The study in a container. Build and run (GPU; data and logs are volumes):
#   docker build -t vit-lm-study .
#   docker run --gpus all -v "$PWD/data:/app/data" -v "$PWD/logs:/app/logs" vit-lm-study
#   docker run --gpus all -v "$PWD/data:/app/data" -v "$PWD/logs:/app/logs" -e QUICK=1 vit-lm-study
# The PyPI torch wheels carry their CUDA libraries, so a slim Python base is enough. BASE_IMAGE may
# also be a bare Debian 12: Python is then installed from Debian's packages.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Debian's own python3 and ca-certificates, on bases that lack them; their versions follow the base.
# hadolint ignore=DL3008
RUN if ! python3 -c "import venv, ensurepip" 2>/dev/null || [ ! -f /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV"

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY *.py runs.sh README.md ./
RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /app/data /app/logs \
    && chown trainer:trainer /app/data /app/logs
USER 1000:1000
VOLUME ["/app/data", "/app/logs"]
CMD ["bash", "runs.sh"]
