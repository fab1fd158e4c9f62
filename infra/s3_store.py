"""The exchange in an S3 bucket: ``storage.exchange: s3://<bucket>[/<prefix>]``.

Same keys as the folder store, under ``<prefix>/`` in the bucket. Only the S3 API is used (tested
against a moto server): credentials come from boto3's usual chain (environment, shared files,
profile, instance role); the endpoint from ``storage.endpoint_url`` or boto3's own
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS S3. A custom endpoint is addressed
path-style (``<endpoint>/<bucket>/<key>``), which S3-compatible servers accept.

Objects are written once. Every write is conditional (``If-None-Match: *`` on ``PutObject`` and on
``CompleteMultipartUpload``), so the server refuses to replace an existing object
(``412 PreconditionFailed``, or ``409 ConditionalRequestConflict`` for a concurrent conditional
write), which becomes an `ExchangeError`. Who enforces it, and how:

- AWS S3 (conditional writes, since August 2024) and MinIO evaluate the condition atomically with
  the write, as their documentation states: of two writers racing on one key exactly one wins.
- moto (measured with moto 5.2 in server mode) honours the header on both calls: the second write
  gets 412 and the object stays as it was. It checks and then writes without holding a lock, so
  racing writers are not serialised by it in principle (16 racing writers x 30 trials: always
  exactly one winner, but that is not a guarantee).
- A server that ignores ``If-None-Match`` replaces the object silently. Readers still check every
  object against its published digest, so a replaced object is refused as an `IntegrityError`
  instead of being used.

Objects above ``MULTIPART_THRESHOLD`` are uploaded in parts of ``PART_SIZE``. A failed upload is
aborted, so it leaves neither a partial object nor an orphaned upload.

No bucket is ever created: a missing bucket is an `ExchangeError` saying so. Every failure of
boto3 (refused request, unreachable endpoint, missing credentials) is an `ExchangeError` naming
the key, the bucket and the S3 error code; credentials never appear in a message.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from fl_core.errors import ConfigError, ExchangeError
from infra.stores import check_key

MiB = 1024 * 1024
MULTIPART_THRESHOLD = 8 * MiB  # objects larger than this are uploaded in parts
PART_SIZE = 8 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
LIST_PAGE = 1000  # keys per ListObjectsV2 page (S3's maximum)

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# what boto3 reads from the environment when it builds a client: a cached client is reused only
# while these stay the same
_CLIENT_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_EC2_METADATA_DISABLED",
    "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)
_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()  # boto3 sessions are not thread-safe; clients are


def parse_s3_url(location: str) -> tuple[str, str]:
    """``s3://bucket[/prefix]`` -> (bucket, prefix); a malformed URL is a `ConfigError` naming it."""
    parts = urlsplit(location)
    if parts.scheme != "s3":
        raise ConfigError(f"storage.exchange = {location!r}: not an s3:// URL")
    if "@" in parts.netloc:  # do not echo: it may hold a secret
        raise ConfigError(
            "storage.exchange: an s3:// URL must not carry credentials; use the AWS environment variables or a profile"
        )
    if parts.query or parts.fragment or parts.port is not None:
        raise ConfigError(f"storage.exchange = {location!r}: an s3:// URL takes no port, query or fragment")
    bucket = parts.netloc
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(
            f"storage.exchange = {location!r}: {bucket!r} is not a valid S3 bucket name "
            "(3-63 characters: lowercase letters, digits, '.' and '-')"
        )
    prefix = parts.path.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"storage.exchange = {location!r}: invalid key prefix {prefix!r}")
    return bucket, prefix


def _safe_endpoint(url: str | None) -> str:
    """The endpoint for a message: without any user:password part."""
    if not url:
        return "the default AWS S3 endpoint"
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl() if "@" in parts.netloc else url


def _client(endpoint_url: str | None, region: str | None):
    import boto3
    from botocore.config import Config

    env_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    key = (endpoint_url, region, tuple(os.environ.get(v) for v in _CLIENT_ENV))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            options: dict[str, Any] = {}
            if endpoint_url or env_endpoint:
                options["s3"] = {"addressing_style": "path"}
            session = boto3.session.Session()
            client = session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=Config(**options) if options else None
            )
            if len(_clients) > 32:
                _clients.clear()
            _clients[key] = client
    return client


class S3ObjectStore:
    """The exchange in ``s3://bucket/prefix``; the `ObjectStore` protocol of `infra.exchange`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ):
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"S3 part size {part_size} is below S3's minimum of {MIN_PART_SIZE} bytes")
        if multipart_threshold < 1:
            raise ConfigError(f"S3 multipart threshold {multipart_threshold} must be positive")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/")).as_posix() if prefix.strip("/") else ""
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._bucket_seen = False
        try:
            self.client = client if client is not None else _client(endpoint_url, region)
        except ImportError:
            raise ExchangeError(f"{self.describe()}: the s3:// exchange needs boto3 (pip install boto3)") from None
        except Exception as exc:  # botocore raises many kinds here (bad region, bad profile, bad URL)
            raise ExchangeError(f"{self.describe()}: cannot set up the S3 client ({type(exc).__name__}: {exc})") from None
        self.endpoint = _safe_endpoint(endpoint_url or getattr(getattr(self.client, "meta", None), "endpoint_url", None))

    # -- keys ---------------------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        key = check_key(key).as_posix()  # 'a//b' and './a' name the same object as in the folder store
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, s3_key: str) -> str:
        return s3_key[len(self.prefix) + 1:] if self.prefix else s3_key

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- errors -------------------------------------------------------------------------------------
    def _error(self, what: str, action: str, exc: Exception) -> ExchangeError:
        """One line for a boto3 failure: what, where and the S3 error code; never a traceback."""
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = self.describe()
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return ExchangeError(
                    f"{what}: the bucket {self.bucket!r} does not exist at {self.endpoint} (S3 NoSuchBucket); "
                    "create it first, fedsilo does not create buckets"
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return ExchangeError(f"{what}: not in the exchange at {where}")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
                return ExchangeError(f"{what}: already in the exchange; objects are written once")
            if code in ("AccessDenied", "403", "Forbidden") or status == 403:
                return ExchangeError(f"{what}: access to {where} denied while trying to {action} (S3 {code or 403})")
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
                return ExchangeError(f"{what}: the S3 endpoint {self.endpoint} refused the credentials (S3 {code})")
            message = str(error.get("Message") or "").strip()
            detail = f"{code}: {message}" if message else (code or f"HTTP {status}")
            return ExchangeError(f"{what}: cannot {action} at {where} (S3 {detail})")
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ExchangeError(
                f"{what}: no usable AWS credentials for {where} ({type(exc).__name__}); set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or a profile"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return ExchangeError(f"{what}: cannot reach the S3 endpoint {self.endpoint} for {where} ({type(exc).__name__})")
        if isinstance(exc, ReadTimeoutError):
            return ExchangeError(f"{what}: the S3 endpoint {self.endpoint} timed out while trying to {action}")
        return ExchangeError(f"{what}: cannot {action} at {where} ({type(exc).__name__}: {exc})")

    def _call(self, what: str, action: str, operation: str, **kwargs) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(what, action, exc) from None
        self._bucket_seen = True
        return response

    def _require_bucket(self, what: str) -> None:
        """HEAD answers 404 for a missing key and a missing bucket alike; tell them apart once."""
        if self._bucket_seen:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                exc.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
            raise self._error(what, "check the bucket", exc) from None
        except BotoCoreError as exc:
            raise self._error(what, "check the bucket", exc) from None
        self._bucket_seen = True

    # -- the ObjectStore protocol -------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        s3_key = self._key(key)
        if len(data) > self.multipart_threshold:
            self._put_parts(key, s3_key, data)
        else:
            self._call(key, "write", "put_object", Key=s3_key, Body=data, IfNoneMatch="*")

    def _put_parts(self, key: str, s3_key: str, data: bytes) -> None:
        part_size = max(self.part_size, -(-len(data) // MAX_PARTS))
        upload = self._call(key, "start a multipart upload", "create_multipart_upload", Key=s3_key)["UploadId"]
        try:
            view = memoryview(data)
            parts = []
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                response = self._call(
                    key, f"upload part {number}", "upload_part", Key=s3_key, UploadId=upload, PartNumber=number,
                    Body=bytes(view[start:start + part_size]),
                )
                parts.append({"ETag": response["ETag"], "PartNumber": number})
            self._call(
                key, "complete a multipart upload", "complete_multipart_upload", Key=s3_key, UploadId=upload,
                MultipartUpload={"Parts": parts}, IfNoneMatch="*",
            )
        except BaseException:
            self._abort(s3_key, upload)
            raise

    def _abort(self, s3_key: str, upload: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=s3_key, UploadId=upload)
        except (ClientError, BotoCoreError):
            pass  # the original failure is what the caller needs to see; a lifecycle rule reaps the rest

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        response = self._call(key, "read", "get_object", Key=self._key(key))
        try:
            return response["Body"].read()
        except BotoCoreError as exc:
            raise self._error(key, "read", exc) from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                self._require_bucket(key)
                return False
            raise self._error(key, "check", exc) from None
        except BotoCoreError as exc:
            raise self._error(key, "check", exc) from None
        self._bucket_seen = True
        return True

    def _s3_keys(self, prefix: str) -> list[str]:
        base = self._key(prefix) + "/"
        keys: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(prefix, "list", "list_objects_v2", Prefix=base, MaxKeys=LIST_PAGE, **extra)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            if not page.get("IsTruncated"):
                return keys
            token = page.get("NextContinuationToken")

    def list(self, prefix: str) -> list[str]:
        return sorted(self._relative(k) for k in self._s3_keys(prefix))

    def delete_prefix(self, prefix: str) -> None:
        keys = self._s3_keys(prefix)
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start:start + DELETE_BATCH]
            response = self._call(
                prefix, "delete", "delete_objects", Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise ExchangeError(
                    f"{prefix}: cannot delete {len(errors)} object(s) at {self.describe()} "
                    f"(first: {self._relative(first.get('Key', '?'))}, S3 {first.get('Code', '?')})"
                )
