"""Backups in S3 (or any S3-compatible store, through boto3's own AWS_ENDPOINT_URL): streamed
multipart upload with server-side encryption, read back, listing, and deletion under the prefix.

Layout under the prefix: `costwarden_backup_YYYYMMDD_HHMMSS_mmm_<6 hex>.dump.gz` (pg_dump custom format,
gzip-compressed; milliseconds and a random suffix make every name unique, and names still sort by time)
and `manifests/<same name>.json`, written last: a backup without its manifest is not complete. Nothing
is ever overwritten: an existing name is refused before the upload starts, and the object and the
manifest are written with `If-None-Match: *`, which S3 (and stores that follow it) refuse when the key
exists. Names of the older form `costwarden_backup_YYYYMMDD_HHMMSS.dump.gz` are still read.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from services.backup.retention import StoredBackup
from services.backup.worker import BackupError, BackupExists, Manifest

NAME_PATTERN = re.compile(r"^costwarden_backup_(\d{8}_\d{6})(?:_(\d{3})_[0-9a-f]{6})?\.dump\.gz$")


def backup_name(at: datetime, suffix: str | None = None) -> str:
    """`costwarden_backup_YYYYMMDD_HHMMSS_mmm_<6 hex>.dump.gz`: unique, and sorted by time."""
    at = at.astimezone(UTC)
    return f"{at:costwarden_backup_%Y%m%d_%H%M%S}_{at.microsecond // 1000:03d}_{suffix or secrets.token_hex(3)}.dump.gz"


def created_at_of(name: str) -> datetime | None:
    match = NAME_PATTERN.match(name)
    if match is None:
        return None
    try:
        at = datetime.strptime(match[1], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return at.replace(microsecond=int(match[2] or 0) * 1000)


def s3_failure(exc: Exception) -> BackupError:
    """boto3's errors as a reason an operator can act on, without the credentials or the whole URL."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return BackupError(f"S3 {exc.operation_name} failed: {error.get('Code', 'error')} "
                           f"{error.get('Message', '')}".strip())
    return BackupError(f"S3 unreachable: {type(exc).__name__}")


P = ParamSpec("P")
R = TypeVar("R")


def s3_errors(method: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise s3_failure(exc) from exc

    return translated


class S3BackupStore:
    def __init__(self, bucket: str, prefix: str, region: str | None, sse: str, kms_key_id: str | None,
                 storage_class: str, part_size: int) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.storage_class = storage_class
        self.part_size = part_size
        self._s3: Any = None
        self._making_client = threading.Lock()

    @property
    def s3(self) -> Any:
        """The boto3 S3 client, made when first used (from worker threads, hence the lock): importing
        boto3 and making a client cost a few hundred milliseconds of CPU, which the backup service would
        otherwise pay at every start, before its first backup."""
        with self._making_client:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                # Default checksum headers (boto3 >= 1.36) are refused by some S3-compatible stores.
                self._s3 = boto3.client("s3", region_name=self.region, config=Config(
                    request_checksum_calculation="when_required", response_checksum_validation="when_required",
                    retries={"max_attempts": 5, "mode": "standard"}))
            return self._s3

    def new_name(self, at: datetime) -> str:
        return backup_name(at)

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def manifest_key(self, name: str) -> str:
        return f"{self.prefix}/manifests/{name}.json"

    def _encryption(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    @s3_errors
    def check_bucket(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)

    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    @s3_errors
    def begin_upload(self, name: str) -> str:
        for key in (self.key(name), self.manifest_key(name)):
            if self._exists(key):
                raise BackupExists(f"refusing to overwrite {key}: a backup of that name already exists")
        response = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key(name),
                                                   StorageClass=self.storage_class, **self._encryption())
        return response["UploadId"]

    @s3_errors
    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> dict:
        response = self.s3.upload_part(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                       PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": response["ETag"]}

    @s3_errors
    def finish_upload(self, name: str, upload_id: str, parts: list[dict]) -> None:
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                          MultipartUpload={"Parts": parts}, IfNoneMatch="*")

    @s3_errors
    def abort_upload(self, name: str, upload_id: str) -> None:
        self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id)

    @s3_errors
    def set_metadata(self, name: str, metadata: dict[str, str]) -> None:
        """Multipart uploads learn their checksum only at the end: copy the object onto itself with it."""
        self.s3.copy({"Bucket": self.bucket, "Key": self.key(name)}, self.bucket, self.key(name), ExtraArgs={
            "Metadata": metadata, "MetadataDirective": "REPLACE", "StorageClass": self.storage_class,
            **self._encryption()})

    @s3_errors
    def head(self, name: str) -> dict:
        return self.s3.head_object(Bucket=self.bucket, Key=self.key(name))

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()
        except (ClientError, BotoCoreError) as exc:
            raise s3_failure(exc) from exc

    @s3_errors
    def write_manifest(self, manifest: Manifest) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.manifest_key(manifest.name),
                           Body=json.dumps(manifest.__dict__, indent=2).encode(), ContentType="application/json",
                           IfNoneMatch="*", **self._encryption())

    @s3_errors
    def manifest(self, name: str) -> Manifest | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.manifest_key(name))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return Manifest(**json.loads(body))

    @s3_errors
    def list_backups(self) -> list[StoredBackup]:
        """Every backup object under the prefix (nothing outside it), complete or not."""
        names: dict[str, bool] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/"):
            for obj in page.get("Contents", []):
                rest = obj["Key"][len(self.prefix) + 1:]
                if rest.startswith("manifests/") and rest.endswith(".json"):
                    names[rest[len("manifests/"):-len(".json")]] = True
                elif "/" not in rest and created_at_of(rest):
                    names.setdefault(rest, False)
        dated = ((name, created_at_of(name), complete) for name, complete in names.items())
        return sorted((StoredBackup(name, at, complete) for name, at, complete in dated if at is not None),
                      key=lambda b: b.created_at)

    @s3_errors
    def delete(self, name: str) -> None:
        for key in (self.key(name), self.manifest_key(name)):
            if not key.startswith(f"{self.prefix}/"):
                raise ValueError(f"refusing to delete {key}: outside the backup prefix")
            self.s3.delete_object(Bucket=self.bucket, Key=key)
