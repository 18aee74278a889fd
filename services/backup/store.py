"""Backups in S3 (or any S3-compatible store, through boto3's own AWS_ENDPOINT_URL): streamed
multipart upload with server-side encryption, read back, listing, and deletion under the prefix.

Layout under the prefix: `costwarden_backup_YYYYMMDD_HHMMSS.dump.gz` (pg_dump custom format,
gzip-compressed) and `manifests/<same name>.json`, written last: a backup without its manifest is
not complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import boto3
from botocore.config import Config

from services.backup.retention import StoredBackup

NAME_FORMAT = "costwarden_backup_%Y%m%d_%H%M%S.dump.gz"


def backup_name(at: datetime) -> str:
    return at.astimezone(UTC).strftime(NAME_FORMAT)


def created_at_of(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, NAME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


@dataclass(frozen=True)
class Manifest:
    name: str
    key: str
    sha256: str
    size_bytes: int
    started_at: str
    finished_at: str
    database: str
    tables: dict[str, int] | None = None


class S3BackupStore:
    def __init__(self, bucket: str, prefix: str, region: str | None, sse: str, kms_key_id: str | None,
                 storage_class: str, part_size: int) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Default checksum headers (boto3 >= 1.36) are refused by some S3-compatible stores.
        self.s3 = boto3.client("s3", region_name=region, config=Config(
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            retries={"max_attempts": 5, "mode": "standard"}))
        self.sse = sse
        self.kms_key_id = kms_key_id
        self.storage_class = storage_class
        self.part_size = part_size

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def manifest_key(self, name: str) -> str:
        return f"{self.prefix}/manifests/{name}.json"

    def _encryption(self) -> dict[str, str]:
        args = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def check_bucket(self) -> None:
        self.s3.head_bucket(Bucket=self.bucket)

    def begin_upload(self, name: str) -> str:
        response = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key(name),
                                                   StorageClass=self.storage_class, **self._encryption())
        return response["UploadId"]

    def upload_part(self, name: str, upload_id: str, number: int, data: bytes) -> dict:
        response = self.s3.upload_part(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                       PartNumber=number, Body=data)
        return {"PartNumber": number, "ETag": response["ETag"]}

    def finish_upload(self, name: str, upload_id: str, parts: list[dict]) -> None:
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id,
                                          MultipartUpload={"Parts": parts})

    def abort_upload(self, name: str, upload_id: str) -> None:
        self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key(name), UploadId=upload_id)

    def set_metadata(self, name: str, metadata: dict[str, str]) -> None:
        """Multipart uploads learn their checksum only at the end: copy the object onto itself with it."""
        self.s3.copy({"Bucket": self.bucket, "Key": self.key(name)}, self.bucket, self.key(name), ExtraArgs={
            "Metadata": metadata, "MetadataDirective": "REPLACE", "StorageClass": self.storage_class,
            **self._encryption()})

    def head(self, name: str) -> dict:
        return self.s3.head_object(Bucket=self.bucket, Key=self.key(name))

    def read(self, name: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        body = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def write_manifest(self, manifest: Manifest) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.manifest_key(manifest.name),
                           Body=json.dumps(manifest.__dict__, indent=2).encode(), ContentType="application/json",
                           **self._encryption())

    def manifest(self, name: str) -> Manifest | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.manifest_key(name))["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return Manifest(**json.loads(body))

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
        return sorted((StoredBackup(name, created_at_of(name), complete) for name, complete in names.items()
                       if created_at_of(name)), key=lambda b: b.created_at)

    def delete(self, name: str) -> None:
        for key in (self.key(name), self.manifest_key(name)):
            if not key.startswith(f"{self.prefix}/"):
                raise ValueError(f"refusing to delete {key}: outside the backup prefix")
            self.s3.delete_object(Bucket=self.bucket, Key=key)
