# Written by `python -m deploy.generate` from deploy/stack.py: edit that, not this file.
# The orchestrator: job service, `orchestrator weights list`, classical stages in-process
# (each model's own image pulls its weights). Build from the repository root:
#   docker build -f deploy/orchestrator.Dockerfile -t restoration/orchestrator:0.1.0 .
FROM python:3.11.14-slim-bookworm
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 RESTORATION_WEIGHTS=/weights
COPY deploy/orchestrator.requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin restoration \
    && mkdir -p /weights && chown 10001:10001 /weights
WORKDIR /app
COPY pyproject.toml ./
COPY proto proto
COPY services services
COPY orchestrator orchestrator
COPY deploy deploy
# Editable, so the package still finds proto/ beside it; setuptools comes with the lock.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && mkdir -p /var/lib/restoration && chown 10001:10001 /var/lib/restoration
USER 10001
VOLUME ["/var/lib/restoration", "/weights"]
EXPOSE 50050
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "deploy.grpc_health", "127.0.0.1:50050"]
CMD ["orchestrator", "serve", "--listen", "0.0.0.0:50050", "--pipeline", "/etc/restoration/pipeline.yaml", "--store", "/var/lib/restoration", "--metrics-port", "51050", "--health-listen", "0.0.0.0:50049", "--tls-dir", "/etc/restoration-tls"]
