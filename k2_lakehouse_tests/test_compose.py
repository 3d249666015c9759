"""The production stack (docker-compose.yml, .env.example, docker/) as docker-compose resolves it.

Debian's docker-compose 1.29 validates and renders a compose file without a Docker engine; `./dev.sh test`
installs it. Every check reads the file as compose itself resolves it (interpolation, anchors, merges).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from k2_lakehouse.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ONE_SHOT = {"bucket-init", "hot-tier-init"}
K2_PROCESSES = {"hot-tier-init", "code-location", "webserver", "daemon", "spark-master", "spark-worker", "metrics"}
SERVICES = {"clickhouse", "postgres", "minio", *ONE_SHOT, *K2_PROCESSES}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY")
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@${}]+:[^@\s${}]+@")
REFERENCE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")  # ${VAR...}, not the escaped $${...}


def docker_compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(
            "docker-compose is not installed; `./dev.sh test` installs it "
            "(apt-get install --no-install-recommends docker-compose)"
        )
    # Only the env file configures the stack here: a K2_* exported in the calling shell would override it.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def render(env_file: Path = ENV_EXAMPLE) -> dict[str, Any]:
    done = docker_compose("config", env_file=env_file)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def env_file_values(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return render()["services"]


def test_the_compose_file_is_valid_with_the_example_env() -> None:
    done = docker_compose("config", "-q")
    assert done.returncode == 0, done.stderr


def test_the_stack_has_every_service(stack: dict[str, Any]) -> None:
    assert SERVICES <= set(stack), f"missing: {sorted(SERVICES - set(stack))}"


def test_published_ports_listen_on_loopback_only(stack: dict[str, Any]) -> None:
    published = {}
    for name, service in stack.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # the long syntax (docker compose v2)
                host_ip, target = port.get("host_ip", ""), port["target"]
            else:  # 1.29 renders "host_ip:published:target/proto"
                host_ip, target = (port.split(":")[0] if port.count(":") == 2 else ""), port.split(":")[-1]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
            published[name] = published.get(name, []) + [str(target).split("/")[0]]
    assert "3000" in published["webserver"], "the Dagster UI is not published"


def test_long_running_services_have_health_checks_and_one_shots_do_not_restart(stack: dict[str, Any]) -> None:
    for name, service in stack.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck", {})
        test = check.get("test") or ["NONE"]
        assert test[0] in ("CMD", "CMD-SHELL") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name


def test_services_wait_for_what_they_need(stack: dict[str, Any]) -> None:
    def waits_for(name: str) -> dict[str, str]:
        return {dep: cond["condition"] for dep, cond in stack[name].get("depends_on", {}).items()}

    assert waits_for("code-location") == {
        "postgres": "service_healthy", "clickhouse": "service_healthy",
        "bucket-init": "service_completed_successfully", "hot-tier-init": "service_completed_successfully",
    }
    for name in ("webserver", "daemon"):
        assert waits_for(name)["code-location"] == "service_healthy"
    assert waits_for("spark-worker") == {"spark-master": "service_healthy"}
    assert waits_for("bucket-init") == {"minio": "service_healthy"}


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    raw = yaml.safe_load(text)  # anchors and merges resolved, nothing interpolated
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                required = re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value))
                assert required, f"{name}: {key} is not a required ${{...}} reference"
    assert not URL_WITH_PASSWORD.search(text), "a URL with a literal password"
    secrets = {k: v for k, v in env_file_values().items() if SECRET_NAME.search(k)}
    assert secrets and not [k for k, v in secrets.items() if v in text]


def test_every_setting_comes_from_the_env_file(tmp_path: Path) -> None:
    """Each variable of .env.example, given a distinct value, reaches the services that use it unchanged."""
    example = env_file_values()
    sentinels = {
        key: str(41000 + i) if key.startswith("HOST_PORT_") else f"sentinel-{key.lower().replace('_', '-')}"
        for i, key in enumerate(example)
    }
    env_file = tmp_path / "sentinel.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in sentinels.items()))
    rendered = render(env_file)
    text = yaml.safe_dump(rendered)
    assert not [key for key, value in sentinels.items() if value not in text], "variables that nothing uses"
    k2_env = rendered["services"]["code-location"]["environment"]
    thresholds = ("K2_ALERT_LAG", "K2_ALERT_STALE", "K2_ALERT_MAINTENANCE")  # read by the exporter (metrics) only
    for key, value in example.items():
        if key.startswith(("K2_", "AWS_")) and key != "K2_IMAGE" and key not in thresholds:
            assert k2_env[key] == sentinels[key], key
    for name in K2_PROCESSES:
        assert rendered["services"][name]["image"] == sentinels["K2_IMAGE"], name
    assert rendered["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == sentinels["CLICKHOUSE_PASSWORD"]
    for name in ("CLICKHOUSE_READER_PASSWORD", "CLICKHOUSE_WRITER_PASSWORD"):
        assert rendered["services"]["clickhouse"]["environment"][name] == sentinels[name]
    for name in ("POSTGRES_DAGSTER_PASSWORD", "POSTGRES_CATALOG_PASSWORD"):
        assert rendered["services"]["postgres"]["environment"][name] == sentinels[name]
    code = "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    referenced = set(REFERENCE.findall(code))
    assert referenced <= set(example), f"not in .env.example: {sorted(referenced - set(example))}"


def test_a_missing_secret_stops_compose_with_its_name(tmp_path: Path) -> None:
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env_file_values().items() if k != "POSTGRES_PASSWORD"))
    done = docker_compose("config", "-q", env_file=env_file)
    assert done.returncode != 0 and "POSTGRES_PASSWORD" in done.stderr, done.stderr


def test_the_example_settings_reach_the_bundled_services(stack: dict[str, Any]) -> None:
    """The K2 URLs of .env.example name the bundled services, with their users and the passwords set for them."""
    example = env_file_values()
    settings = Settings.from_env(stack["code-location"]["environment"])
    ch = settings.clickhouse
    assert (ch.host, ch.port, ch.user, ch.password) == ("clickhouse", 9000, "k2_reader", example["CLICKHOUSE_READER_PASSWORD"])
    assert ch.database == stack["clickhouse"]["environment"]["CLICKHOUSE_DB"]
    writer = settings.clickhouse_writer
    assert (writer.host, writer.port, writer.user, writer.password, writer.database) == (
        "clickhouse", 9000, "k2_writer", example["CLICKHOUSE_WRITER_PASSWORD"], ch.database
    )
    for url, role, password, database in (
        (settings.postgres_url, "k2_dagster", "POSTGRES_DAGSTER_PASSWORD", "/dagster"),
        (settings.iceberg_catalog_uri, "k2_catalog", "POSTGRES_CATALOG_PASSWORD", "/iceberg"),
    ):
        parts = urlsplit(url)
        assert (parts.scheme, parts.hostname, parts.port, parts.username, parts.password, parts.path) == (
            "postgresql+psycopg2", "postgres", 5432, role, example[password], database
        )
    assert settings.warehouse.startswith("s3://") and settings.s3_endpoint == "http://minio:9000"
    assert stack["bucket-init"]["environment"]["K2_WAREHOUSE"] == settings.warehouse
    assert settings.spark_master == "spark://spark-master:7077" and "7077" in stack["spark-master"]["command"]
    assert settings.engine == "duckdb"


def test_k2_processes_share_one_image_and_the_workspace_finds_the_code_location(stack: dict[str, Any]) -> None:
    # The Spark driver (code location) and executors (worker) must run the same Python, packages and jars.
    assert len({stack[name]["image"] for name in K2_PROCESSES}) == 1
    assert all(Path(stack[name]["build"]["context"]) == ROOT for name in K2_PROCESSES)
    (entry,) = yaml.safe_load((ROOT / "docker" / "workspace.yaml").read_text())["load_from"]
    server = entry["grpc_server"]
    command = stack["code-location"]["command"]
    assert server["host"] == "code-location" and command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-p") + 1] == str(server["port"])
    assert command[command.index("--location-name") + 1] == server["location_name"]


def test_bundled_images_are_pinned(stack: dict[str, Any]) -> None:
    for name, service in stack.items():
        if name in K2_PROCESSES:
            continue
        tag = service["image"].rpartition(":")[2]
        assert re.search(r"\d", tag) and tag != "latest", f"{name}: {service['image']} is not a pinned version"


def test_secrets_stay_out_of_git_and_the_image_build() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in dockerignore and "!.env" not in dockerignore  # everything out of the context, then an allow-list


def test_least_privilege_users_and_roles(stack: dict[str, Any]) -> None:
    """K2 reads ClickHouse as a read-only user and writes as a separate one, which only the processes that
    change the hot tier get; each PostgreSQL database has its own role, owner of that database only."""
    import xml.etree.ElementTree as ET

    clickhouse = stack["clickhouse"]
    mounts = {v["target"]: v["source"] for v in clickhouse["volumes"] if isinstance(v, dict)} or {
        v.split(":")[1]: v.split(":")[0] for v in clickhouse["volumes"]
    }
    users_file = Path(mounts["/etc/clickhouse-server/users.d/k2-users.xml"])
    assert users_file == ROOT / "docker" / "clickhouse-users.xml"
    root = ET.parse(users_file).getroot()
    reader, writer = root.find("users/k2_reader"), root.find("users/k2_writer")
    assert reader.findtext("profile") == "k2_reader"
    # readonly=2: reads and the per-query settings K2 sends (max_block_size); readonly=1 would refuse those.
    assert root.findtext("profiles/k2_reader/readonly") == "2"
    for user, variable in ((reader, "CLICKHOUSE_READER_PASSWORD"), (writer, "CLICKHOUSE_WRITER_PASSWORD")):
        assert user.find("password").get("from_env") == variable and not (user.findtext("password") or "").strip()
        assert [d.text for d in user.findall("allow_databases/database")] == ["k2"]
        assert clickhouse["environment"][variable]
    assert stack["clickhouse"]["environment"]["CLICKHOUSE_USER"] not in ("k2_reader", "k2_writer")

    with_writer = {name for name, service in stack.items() if "K2_CLICKHOUSE_WRITER_URL" in (service.get("environment") or {})}
    assert with_writer == {"hot-tier-init", "code-location"}
    # The webhook URL (it may carry a token): the code location's alert sensors and the exporter's relay only;
    # Alertmanager posts to that relay and never holds the URL.
    with_webhook = {name for name, service in stack.items() if "K2_ALERT_WEBHOOK_URL" in (service.get("environment") or {})}
    assert with_webhook == {"code-location", "metrics"}
    assert "write=True" in " ".join(stack["hot-tier-init"]["command"])

    init = (ROOT / "docker" / "postgres-init.sh").read_text()
    for role, database, variable in (("k2_dagster", "dagster", "POSTGRES_DAGSTER_PASSWORD"),
                                     ("k2_catalog", "iceberg", "POSTGRES_CATALOG_PASSWORD")):
        create = re.search(rf"CREATE ROLE {role} (.*);", init)
        assert create and all(word in create[1] for word in ("LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE"))
        assert f"CREATE DATABASE {database} OWNER {role};" in init
        assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;" in init
        assert f"${{{variable}:?" in init and stack["postgres"]["environment"][variable]
    assert "PASSWORD '" not in init  # passwords only as psql variables, never pasted into SQL text
