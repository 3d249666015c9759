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


class SchemaDrift(K2Error):
    """A hot table no longer matches its bronze contract (a column removed, renamed or retyped), or gained a column
    of a type bronze cannot hold: the offload stopped before writing any file; nothing committed, watermark unchanged."""

    def __init__(self, table: str, drifts: list[tuple[str, str, str]], message: str) -> None:
        super().__init__(message)
        self.table = table  # the hot table, database.table
        self.drifts = drifts  # (column, expected, found) for every column that drifted

    def __reduce__(self):  # pickles (the message alone would not rebuild it)
        return type(self), (self.table, self.drifts, str(self))
