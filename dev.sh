#!/usr/bin/env bash
# K2 Lakehouse: the front-door commands.
#   ./dev.sh live   set everything up and run the live system (feed, Dagster UI on :3000, daemon) until Ctrl-C
#   ./dev.sh demo   one-shot: set everything up, seed one day of trades, build all nine tables, verify every layer
#   ./dev.sh test   set everything up and run every test (pytest starts its own ClickHouse and PostgreSQL)
set -euo pipefail
cd "$(dirname "$0")"

setup() {
  # uv resolves and installs the pinned set in seconds (pip takes minutes); `python3 -m uv` needs no PATH entry.
  python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check uv
  [ -x .venv/bin/python ] || python3 -m uv venv --quiet .venv --python python3.11
  python3 -m uv pip install --quiet --python .venv/bin/python -e '.[test]'
  # The UI test drives Debian's chromium through playwright (never `playwright install`): ~80 s, once.
  # docker-compose (1.29, without the Docker engine it recommends) validates docker-compose.yml in a test.
  # Prometheus, Alertmanager, promtool and amtool: the monitoring tests and `k2 live` (`k2 services up` installs
  # them too); a systemd host would start the packaged units on 0.0.0.0, so they are disabled (K2 runs its own).
  if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/docker-compose ] || [ ! -x /usr/bin/promtool ] \
       || [ ! -x /usr/bin/prometheus-alertmanager ]; } && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose prometheus prometheus-alertmanager >/dev/null
    if [ -d /run/systemd/system ]; then systemctl disable --now prometheus prometheus-alertmanager >/dev/null 2>&1 || true; fi
  fi
}

case "${1:-}" in
  live)
    setup
    shift
    exec .venv/bin/k2 live "$@"
    ;;
  demo)
    setup
    export PATH="$PWD/.venv/bin:$PATH"
    k2 services up
    eval "$(k2 services env)"
    day="${K2_DEMO_DATE:-$(date -u -d yesterday +%F)}"
    k2 feed seed --date "$day" --rows "${K2_DEMO_ROWS:-500000}" --seed 7
    k2 run
    k2 verify
    echo
    echo "Dagster UI: eval \"\$(.venv/bin/k2 services env)\" && .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000"
    echo "Stop the services: .venv/bin/k2 services down"
    ;;
  test)
    setup
    shift
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: $0 live [k2 live options] | demo | test [pytest args]" >&2
    exit 2
    ;;
esac
