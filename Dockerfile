# syntax=docker/dockerfile:1
# One image for all of peakpilot: the controller (`peakpilot run`), the inference node (`peakpilot serve`)
# and the dashboard (`peakpilot dashboard`). deploy/ runs it as peakpilot/peakpilot:0.1.0.
#
#   docker build -t peakpilot/peakpilot:0.1.0 .
#       torch from PyPI: the CUDA build, for the GPU inference nodes
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t peakpilot/peakpilot:0.1.0-cpu .
#       the CPU build: a much smaller image, enough for the controller and the dashboard
#
# The project is installed editable from /opt/peakpilot, so the defaults it ships beside its packages
# (configs/policy.yaml, the sample trace in data/) resolve as they do in a checkout.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

# LightGBM's OpenMP runtime: the one shared library its wheel does not bring. Not pinned: Debian's
# security updates replace the version within a release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/peakpilot
COPY pyproject.toml README.md LICENSE ./
COPY peakpilot/ peakpilot/
COPY forecaster/ forecaster/
COPY controller/ controller/
COPY inference_node/ inference_node/
COPY dashboard/ dashboard/
COPY configs/ configs/
COPY data/ data/

# torch first, exactly the pinned version, from the chosen index; then the project, the PostgreSQL store,
# transformers (serve --model hf:PATH), botocore and google-auth (Amazon's and Google's managed Prometheus).
RUN if [ -n "$TORCH_INDEX" ]; then pip install --index-url "$TORCH_INDEX" "torch==2.13.0"; fi \
    && pip install -e ".[postgres,hf,aws,gcp]" \
    && python -m compileall -q /opt/peakpilot

# The manifests run as this user with a read-only root: /tmp and /var/lib/peakpilot are their volumes.
USER 10001
EXPOSE 8000 9100 8501
ENTRYPOINT ["peakpilot"]
CMD ["--help"]
