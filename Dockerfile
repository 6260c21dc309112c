# The pipeline's programs (producer, consumer, connector registration, CQL applier) for
# infra/docker-compose.yml. Build context: the repository root (.dockerignore keeps it small and
# keeps .env out).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The dependencies change less often than the code: install them in their own layer.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY pipeline ./pipeline
COPY producer ./producer
COPY consumer ./consumer
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin app

COPY config ./config

USER app
# Every compose service names its own command; this one only shows the effective config.
CMD ["python", "-m", "pipeline", "show"]
