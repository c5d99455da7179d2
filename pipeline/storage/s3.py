"""S3 (and S3-compatible) object store.

Conditional writes use S3's own preconditions: `IfNoneMatch="*"` to create-if-absent and
`IfMatch=<etag>` to compare-and-swap, so two writers racing on a pointer cannot both win. Both
boto3 and pyarrow retry throttling, 5xx and connection errors with exponential backoff.

In-doubt conditional writes: botocore retries a PUT whose answer was lost (connection dropped,
timeout, 5xx after the write), and if the first attempt had landed the retry is refused (412),
which would read as a lost race. So a refused conditional write that botocore retried
(`ResponseMetadata.RetryAttempts > 0`) reads the object back: if it holds exactly the bytes this
call wrote, the write was ours and succeeded (callers write unique bodies: leases and pointers
embed owner/epoch/version and expiry). A refusal on the first attempt is a real lost race.

Opening a store for writing (`check()`) probes once per process per bucket/prefix that the server
honours `If-None-Match` and `If-Match` on PUT; a server that ignores them would let two writers
both "win", so it is refused with a `UserError`; `check(write=False)` skips the probe.

Error messages name the bucket and key, never credentials. Credentials are never copied out of the
AWS credential chains, so they refresh during long runs and nothing picklable carries a secret.
Whole files go through `upload_file` / `download_file`, streamed in chunks (multipart above one
part). `list_objects` pages through ListObjectsV2 (sizes and ETags of 1000 keys a request), so
discovering a source of a million files costs a thousand requests, not a HEAD per file.
"""

from __future__ import annotations

import io
import os
import threading
import uuid
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pyarrow.fs as pafs
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ..errors import UserError
from . import multipart
from .base import ListedObject, ObjectStore, StorageSettings
from .files import CHUNK_SIZE, check_unchanged, hash_stream, receive

_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_NOT_SUPPORTED_CODES = {"NotImplemented", "501", "InvalidArgument", "InvalidRequest"}
_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}


# (endpoint, bucket, prefix) -> None when conditional writes are honoured, else the refusal message.
_PROBED: dict[tuple[str | None, str, str], str | None] = {}
_PROBE_LOCK = threading.Lock()
_REQUIREMENT = (
    "Sora's leases and atomic publishes need them (AWS S3, Cloudflare R2 and recent MinIO releases "
    "support conditional PUT)"
)


def _endpoint(settings: StorageSettings) -> str | None:
    return settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


class S3Store(ObjectStore):
    def __init__(self, root_uri: str, settings: StorageSettings) -> None:
        parsed = urlparse(root_uri)
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if not self.bucket:
            raise UserError(f"bad S3 URI {root_uri!r}: expected s3://bucket[/prefix]")
        endpoint = _endpoint(settings)
        self.endpoint = endpoint
        region = settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        session = boto3.session.Session(region_name=region)
        self.client = session.client(
            "s3",
            endpoint_url=endpoint,
            # total_max_attempts counts the first try (botocore's max_attempts would count retries only).
            # Pool sized for the exchange readers' parallel ranged GETs (`data/exchange.py`).
            config=Config(
                retries={"total_max_attempts": settings.max_attempts, "mode": "adaptive"}, max_pool_connections=32
            ),
        )
        # No keys are handed to pyarrow: its AWS SDK resolves them itself (environment, profile, web
        # identity, container or instance role) and refreshes them before they expire. Keys copied in
        # here would be frozen for the whole run (role credentials rotate within hours) and would be
        # pickled with `self.fs` into every Ray worker. boto3 keeps its own refreshing chain.
        fs_kwargs: dict = {
            "region": region,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=settings.max_attempts),
        }
        if endpoint:
            endpoint_parts = urlparse(endpoint)
            fs_kwargs.update(endpoint_override=endpoint_parts.netloc, scheme=endpoint_parts.scheme or "https")
        base = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        super().__init__(root_uri, pafs.S3FileSystem(**fs_kwargs), base)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _describe(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key else f"s3://{self.bucket}"

    def _user_error(self, error: Exception, key: str | None = None) -> Exception:
        code = ""
        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
        text = str(error)
        if code in {"NoSuchBucket"} or "NoSuchBucket" in text or "NO_SUCH_BUCKET" in text:
            return UserError(f"bucket {self.bucket!r} does not exist ({self._describe(key)})")
        if code in _ACCESS_CODES or "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text:
            return UserError(f"access denied to {self._describe(key)}: check the AWS credentials and the bucket policy")
        if isinstance(error, NoCredentialsError):
            return UserError(f"no AWS credentials found for {self._describe(key)}")
        return error

    def translate_error(self, error: Exception, key: str) -> Exception:
        return self._user_error(error, key)

    def list_objects(self, prefix: str = "") -> list[ListedObject]:
        """Paginated ListObjectsV2 (1000 keys a request) with sizes and ETags: no request per file.
        When nothing lies under `prefix/`, one more listing of `prefix` itself says whether it is a
        file (a listing, not a HEAD: the same request kind, and no 404 to tell from a denial)."""
        target = self._key(prefix) if prefix else self.prefix
        start = len(self.prefix) + 1 if self.prefix else 0
        found: list[ListedObject] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{target}/" if target else ""
            )
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # a "directory" marker object is no file
                        found.append(ListedObject(item["Key"][start:], item["Size"], item["ETag"]))
            if not found and target:
                page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=target, MaxKeys=1)
                item = (page.get("Contents") or [{}])[0]
                if item.get("Key") == target:
                    found.append(ListedObject(prefix, item["Size"], item["ETag"]))
        except (ClientError, BotoCoreError) as error:
            raise self._user_error(error, prefix or None) from None
        return sorted(found, key=lambda o: o.key)

    def write(self, key: str, data: bytes) -> None:
        try:
            if len(data) > multipart.PART_SIZE:  # one PutObject is capped at 5 GiB
                multipart.upload_multipart(
                    self.client, self.bucket, self._key(key), io.BytesIO(data), len(data), multipart.PART_SIZE
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as error:
            raise self._user_error(error, key) from None

    def _get(self, key: str, **request) -> dict:
        """GetObject; a missing key is `FileNotFoundError`, other failures our `UserError`s."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key), **request)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
            raise self._user_error(error, key) from None
        except BotoCoreError as error:
            raise self._user_error(error, key) from None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        response = self._get(key, Range=f"bytes={start}-{start + length - 1}")
        try:
            with closing(response["Body"]) as body:
                return body.read()
        except BotoCoreError as error:  # connection lost mid-body
            raise self._user_error(error, key) from None

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as error:
            if _is_precondition_failure(error):
                return self._landed_before_retry(error, key, data) is not None
            raise self._user_error(error, key) from None

    def read_with_etag(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise self._user_error(error, key) from None
        return response["Body"].read(), response["ETag"]

    def swap(self, key: str, data: bytes, expected_etag: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if expected_etag is None else {"IfMatch": expected_etag}
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return response["ETag"]
        except ClientError as error:
            if _is_precondition_failure(error):
                return self._landed_before_retry(error, key, data)
            if error.response.get("Error", {}).get("Code") == "NoSuchKey":
                return None
            raise self._user_error(error, key) from None

    def _landed_before_retry(self, error: ClientError, key: str, data: bytes) -> str | None:
        """A conditional PUT was refused. If botocore had retried it, an earlier attempt may have
        written (its answer lost) and made the retry fail its own precondition: then the object
        holds exactly `data`. Returns the object's ETag when it does, else None (a lost race)."""
        if not error.response.get("ResponseMetadata", {}).get("RetryAttempts"):
            return None  # refused on the first attempt: nothing of ours can be there
        current = self.read_with_etag(key)
        if current is not None and current[0] == data:
            return current[1]
        return None

    def upload_file(self, key: str, path: Path, part_size: int | None = None) -> tuple[int, str]:
        part_size = multipart.PART_SIZE if part_size is None else part_size
        multipart.check_part_size(part_size)
        try:
            with open(path, "rb") as handle:
                before = os.fstat(handle.fileno())
                if before.st_size > part_size:
                    sha = multipart.upload_multipart(
                        self.client, self.bucket, self._key(key), handle, before.st_size, part_size
                    )
                else:
                    # Hash first, then let botocore stream the file (it may re-read it for checksums
                    # and retries); the stat check below catches a file modified in between.
                    _, sha = hash_stream(handle)
                    handle.seek(0)
                    self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=handle)
                check_unchanged(handle, before, Path(path))
        except (ClientError, BotoCoreError) as error:
            raise self._user_error(error, key) from None
        return before.st_size, sha

    def download_file(
        self, key: str, path: Path, expected_sha256: str | None = None, expected_size: int | None = None
    ) -> tuple[int, str]:
        response = self._get(key)
        with closing(response["Body"]) as body:
            if expected_size is not None and response["ContentLength"] != expected_size:
                raise ValueError(
                    f"{self.uri(key)}: object has {response['ContentLength']} bytes, expected {expected_size}"
                )
            try:
                return receive(body.iter_chunks(CHUNK_SIZE), Path(path), self.uri(key), expected_sha256, expected_size)
            except BotoCoreError as error:  # connection lost or timed out mid-stream
                raise self._user_error(error, key) from None

    def check(self, write: bool = True) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            if write:
                self._check_conditional_writes()
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise UserError(f"bucket {self.bucket!r} does not exist ({self.root_uri})") from None
            raise self._user_error(error) from None
        except NoCredentialsError:
            raise UserError(f"no AWS credentials found for {self.root_uri}") from None
        except BotoCoreError as error:
            raise UserError(f"cannot reach object storage for {self.root_uri}: {type(error).__name__}") from None

    def _check_conditional_writes(self) -> None:
        """Probe once per process per (endpoint, bucket, prefix) that the server refuses a create
        of an existing key and a swap with a stale tag; refuse the store with one line if not."""
        cache_key = (self.endpoint, self.bucket, self.prefix)
        with _PROBE_LOCK:
            if cache_key not in _PROBED:
                _PROBED[cache_key] = self._probe_conditional_writes()
            refusal = _PROBED[cache_key]
        if refusal is not None:
            raise UserError(refusal)

    def _probe_conditional_writes(self) -> str | None:
        """None when conditional writes are honoured, else the refusal message. Raises ClientError
        / BotoCoreError for other failures (access, network), which `check` turns into UserErrors."""
        key = self._key(f"_sora/probe-{uuid.uuid4().hex}")
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"sora conditional-write probe 1")
        try:
            ignored = []
            for header, value in (("IfNoneMatch", "*"), ("IfMatch", '"00000000000000000000000000000000"')):
                try:
                    self.client.put_object(
                        Bucket=self.bucket, Key=key, Body=b"sora conditional-write probe 2", **{header: value}
                    )
                    ignored.append(header)
                except ClientError as error:
                    if _is_precondition_failure(error):
                        continue
                    code = str(error.response.get("Error", {}).get("Code", ""))
                    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
                    if code in _NOT_SUPPORTED_CODES or status in _NOT_SUPPORTED_CODES:
                        ignored.append(header)
                        continue
                    raise
        finally:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except (ClientError, BotoCoreError):
                pass  # a stray probe object is harmless
        if not ignored:
            return None
        names = " and ".join({"IfNoneMatch": "If-None-Match", "IfMatch": "If-Match"}[h] for h in ignored)
        return f"{self.root_uri} does not honour conditional writes ({names}); {_REQUIREMENT}"


def _is_precondition_failure(error: ClientError) -> bool:
    info = error.response.get("Error", {})
    status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return str(info.get("Code", "")) in _PRECONDITION_CODES or status in {"412", "409"}
