# syntax=docker/dockerfile:1
# The K2 image: one image for every K2 process of the production stack (docker-compose.yml) — the Dagster code
# location, webserver and daemon, hot-tier-init, and the Spark master and worker — so that the Spark driver (in
# the code location) and the executors (on the workers) run the same Python, packages and jars.
# Everything is installed here, at build time; nothing is downloaded when a container runs.

# Debian 12 (bookworm): its openjdk-17 is the Java Spark 3.5 runs on here (Debian 13 ships Java 21 only).
FROM python:3.11.14-slim-bookworm

# Java 17 for Spark; the PostgreSQL JDBC driver (/usr/share/java/postgresql.jar) for Spark's Iceberg JDBC
# catalog; curl for the health checks. (The man1 directory: openjdk's post-install needs it on slim images.)
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      openjdk-17-jre-headless libpostgresql-jdbc-java curl \
 && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/k2
# The pinned dependencies first (pyproject.toml is the one place that pins them), in their own layer, so that a
# change to K2's code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY README.md ./
COPY k2_lakehouse ./k2_lakehouse
RUN pip install --no-deps . && rm -rf build *.egg-info

# Spark is pyspark's own distribution (jars and bin/spark-class), the same one the driver uses: the master and
# worker are started with its spark-class (pip also puts a copy on the PATH; the link makes it this one).
# Executors run Python tasks with this image's python3.
ENV SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=python3 \
    DAGSTER_HOME=/opt/dagster/home
RUN test -x "$SPARK_HOME/bin/spark-class" \
 && ln -sf "$SPARK_HOME/bin/spark-class" /usr/local/bin/spark-class \
 && java -version 2>&1 | grep -q 'version "17' \
 && test -f /usr/share/java/postgresql.jar \
 && python -c "import k2_lakehouse.definitions"

# An unprivileged user; the directories the stack mounts volumes on belong to it (a new named volume takes
# the ownership of its mount point in the image).
RUN useradd --system --uid 10001 --user-group --home-dir /opt/dagster --shell /usr/sbin/nologin k2 \
 && mkdir -p /opt/dagster/home/storage /var/lib/spark/work \
 && chown -R k2:k2 /opt/dagster /var/lib/spark
# The Dagster instance (storage in PostgreSQL from K2_POSTGRES_URL) and the workspace of the webserver and the
# daemon (the code location's gRPC server).
COPY dagster.yaml /opt/dagster/home/dagster.yaml
COPY docker/workspace.yaml /opt/dagster/workspace.yaml

USER k2
WORKDIR /opt/dagster
EXPOSE 3000 4000 7077 8080 8081
CMD ["dagster", "code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "k2_lakehouse.definitions", "-a", "defs"]
