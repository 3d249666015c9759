"""Object storage: what the catalog's file IO, the engines and the local S3 server share about S3.

A warehouse is local (`file://…`) or in an S3-compatible object store (`s3://bucket/prefix`, with
K2_S3_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY). Light on imports (pyarrow's
S3 client only when asked for): `k2 services` uses it before any Iceberg code is loaded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

S3_SCHEMES = ("s3", "s3a", "s3n")


def is_object_store(location: str) -> bool:
    """A warehouse (or file) location in S3 rather than on a local disk."""
    return urlsplit(location).scheme in S3_SCHEMES


def aws_checksums_when_required() -> None:
    """Recent AWS SDKs (the C++ one inside pyarrow included) send a checksum with every upload, streamed
    without a Content-Length; S3-compatible servers such as the JuiceFS gateway and older MinIO answer
    411 MissingContentLength. WHEN_REQUIRED restores the classic requests. Each S3 client reads these
    when it is created, so call this before creating one; an operator's own choice is kept (setdefault)."""
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "WHEN_REQUIRED")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "WHEN_REQUIRED")


def s3_filesystem(
    *, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1", **options: object
) -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 client for an S3-compatible server, path-style (http://endpoint/bucket/key); paths
    are `bucket/key`. An empty endpoint means AWS itself; empty keys, the AWS default credential chain."""
    import pyarrow.fs

    aws_checksums_when_required()
    return pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint or None, access_key=access_key or None, secret_key=secret_key or None,
        region=region, force_virtual_addressing=False, **options,
    )
