"""One exceptions module for the core: each error says what went wrong and what to do."""


class K2Error(Exception):
    """Base class: an error K2 explains to the user instead of a traceback."""


class ConfigError(K2Error):
    """A setting is missing or malformed."""


class ServiceError(K2Error):
    """A local service could not be installed, started or reached."""


class HotTierUnavailable(K2Error):
    """ClickHouse cannot be reached; nothing was committed."""


class OffloadConflict(K2Error):
    """Concurrent writers kept winning the commit race; the run gave up without committing."""


class PublishConflict(K2Error):
    """Concurrent writers kept moving a table's `main` while a partition waited to be published."""


class AuditFailed(K2Error):
    """A write-audit-publish check failed: `main` was left exactly as it was."""
