"""Alerts to a webhook (K2_ALERT_WEBHOOK_URL): the JSON messages, their redaction and the POST.

Pure (no Dagster): `defs/alerts.py` feeds it what Dagster recorded. Every string of a message is redacted
before it leaves: the settings' passwords and S3 keys, the webhook URL and its token, and anything shaped like
`scheme://user:password@` or `password=...` in free text (error texts quote URLs we do not know of).
The webhook URL is never logged, put in a message or in an exception's text.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

from k2_lakehouse.core.errors import ConfigError, K2Error
from k2_lakehouse.core.settings import Settings

WEBHOOK_VARIABLE = "K2_ALERT_WEBHOOK_URL"
DAGSTER_URL_VARIABLE = "K2_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
MAX_TEXT = 2000  # chars per string in a message: a stack of causes must not make a chat message unreadable
MASK = "***"
TOKEN_MIN_CHARS = 16  # a webhook path segment or query value this long may be a token (Slack's are 24)

# user:password@ after a scheme; the user part stops at ':', '/', '@' or space so two URLs never merge.
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s@]+)@")
_PASSWORD_PAIR = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|token)\s*[=:]\s*)(?P<value>[^\s&;,'\"]+)", re.IGNORECASE)


class AlertDeliveryError(K2Error):
    """The webhook did not take the alert. The text never contains the webhook URL."""


def _url_secrets(url: str) -> list[str]:
    """A URL's password, raw and decoded (error texts may quote either)."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def webhook_secrets(url: str) -> list[str]:
    """Everything of the webhook URL that may be its token: the URL, its password, path and query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
    except ValueError:  # not even a URL: the whole of it is the secret
        return [url]
    # Slack-style hooks carry the token in the path, others in the query. Short parts ("/alerts", "json")
    # are words, not tokens: masking them would mangle every message.
    parts_ = [parts.path, *parts.path.split("/"), *(v for _, v in parse_qsl(parts.query))]
    return [url, *_url_secrets(url), *(p for p in parts_ if len(p) >= TOKEN_MIN_CHARS)]


def secrets_of(settings: Settings, webhook_url: str = "") -> list[str]:
    """Every secret a message must not carry, longest first (so a secret containing another goes whole)."""
    found = [
        *_url_secrets(settings.clickhouse_url), *_url_secrets(settings.clickhouse_writer_url),
        *_url_secrets(settings.postgres_url), *_url_secrets(settings.iceberg_catalog_uri),
        settings.s3_secret_access_key, settings.s3_access_key_id, *webhook_secrets(webhook_url),
    ]
    return sorted({s for s in found if s}, key=len, reverse=True)


# The settings' variables that may carry a password, for when the settings themselves do not parse.
_URL_VARIABLES = ("K2_CLICKHOUSE_URL", "K2_CLICKHOUSE_WRITER_URL", "K2_POSTGRES_URL", "K2_ICEBERG_CATALOG_URI")


def secrets_from_env(env: Mapping[str, str]) -> list[str]:
    """`secrets_of` the settings and webhook of `env`. A malformed setting must not stop the alert that may
    well be about it: then the raw variables' passwords and keys are taken as they are."""
    url = env.get(WEBHOOK_VARIABLE, "").strip()
    try:
        return secrets_of(Settings.from_env(dict(env)), url)
    except ConfigError:
        found = [s for v in _URL_VARIABLES for s in _url_secrets(env.get(v, ""))]
        found += [env.get("AWS_SECRET_ACCESS_KEY", ""), env.get("AWS_ACCESS_KEY_ID", ""), *webhook_secrets(url)]
        return sorted({s for s in found if s}, key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _PASSWORD_PAIR.sub(lambda m: f"{m['head']}{MASK}", text)


def finalize(message: object, secrets: Iterable[str] = ()) -> object:
    """The message as it may leave: every string (keys too) redacted, then cut to MAX_TEXT.

    Redaction comes first: cutting first could leave the first half of a password that no longer matches.
    """
    secrets = list(secrets)
    if isinstance(message, str):
        text = redact_text(message, secrets)
        return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"
    if isinstance(message, Mapping):
        return {finalize(str(k), secrets): finalize(v, secrets) for k, v in message.items()}
    if isinstance(message, (list, tuple)):
        return [finalize(v, secrets) for v in message]
    if isinstance(message, float) and not math.isfinite(message):
        return None  # JSON has no NaN
    return message


def run_link(dagster_url: str, run_id: str) -> str:
    return f"{(dagster_url or DEFAULT_DAGSTER_URL).rstrip('/')}/runs/{run_id}"


def _iso(timestamp: float | None) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc) if timestamp else dt.datetime.now(dt.timezone.utc)
    return moment.isoformat(timespec="seconds")


def run_failure_message(
    *, job: str, run_id: str, partition: str | None, assets: Iterable[str], error: str,
    dagster_url: str, at: float | None = None,
) -> dict:
    return {
        "kind": "run_failure", "job": job, "run_id": run_id, "partition": partition,
        "assets": sorted(assets), "error": error, "link": run_link(dagster_url, run_id), "at": _iso(at),
    }


def numbers(metadata: Mapping[str, object]) -> dict[str, int | float]:
    """The metadata values that are numbers (a check's expected, actual, difference, ...); not booleans."""
    return {k: v for k, v in metadata.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_failure_message(
    *, asset: str, check: str, partition: str | None, severity: str, blocking: bool | None,
    metadata: Mapping[str, object], description: str | None, run_id: str, dagster_url: str, at: float | None = None,
) -> dict:
    base = (dagster_url or DEFAULT_DAGSTER_URL).rstrip("/")
    return {
        "kind": "check_failure", "asset": asset, "check": check, "partition": partition, "severity": severity,
        "blocking": blocking, "numbers": numbers(metadata), "description": description, "run_id": run_id or None,
        # A check reported outside a run has no run page: its asset's checks instead.
        "link": run_link(base, run_id) if run_id else f"{base}/assets/{asset}?view=checks",
        "at": _iso(at),
    }


def post_json(url: str, payload: object, timeout: float = 10) -> None:
    """POST `payload` as JSON; AlertDeliveryError (without the URL) if the webhook does not answer 2xx."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise AlertDeliveryError(f"{WEBHOOK_VARIABLE} must be an http(s) URL")  # never file:// and the like
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "k2-lakehouse-alerts"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    # `from None`: the chained exception's text could quote the URL (urllib's do, for some errors).
    except urllib.error.HTTPError as exc:
        raise AlertDeliveryError(f"alert webhook answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise AlertDeliveryError(f"alert webhook unreachable: {_reason(exc.reason, url)}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise AlertDeliveryError(f"alert webhook unreachable: {_reason(exc, url)}") from None


def _reason(reason: object, url: str) -> str:
    text = reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    return f"{type(reason).__name__}: {redact_text(text, webhook_secrets(url))}"


MAX_NOTIFICATION_BYTES = 1 << 20  # Alertmanager's notifications are a few KiB; a bigger body is not one


def alertmanager_notification(body: bytes) -> dict:
    """`body` as Alertmanager's webhook notification (version 4), or ValueError saying why it is not one.

    The exporter's relay forwards only these: it listens where other programs can reach it, and must not
    carry whatever they post to the webhook.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(payload, dict) or payload.get("version") != "4":
        raise ValueError("not an Alertmanager webhook notification (version 4)")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts or not all(
        isinstance(a, dict) and isinstance(a.get("labels"), dict) and a["labels"].get("alertname") for a in alerts
    ):
        raise ValueError("an Alertmanager notification carries alerts, each with an alertname label")
    return payload


def send(url: str, message: Mapping, secrets: Iterable[str]) -> dict:
    """Redact and cut `message`, then post it; returns what was sent."""
    sent = finalize(message, secrets)
    post_json(url, sent)
    return sent
