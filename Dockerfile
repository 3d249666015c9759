FROM python:3.11-slim
WORKDIR /opt/k2
COPY pyproject.toml README.md ./
COPY k2_lakehouse ./k2_lakehouse
RUN pip install --no-cache-dir . && mkdir -p /opt/dagster/home
ENV DAGSTER_HOME=/opt/dagster/home
