"""S3 multipart upload of one local file, hashed while it streams.

A single PutObject is capped at 5 GiB (a 7B run's ZeRO-3 optimizer shards and its safetensors
export are bigger), so files over one part go up in parts. The file is read once, in order: each
part is hashed into the whole-file sha256 and handed to a small thread pool, and a semaphore
caps the parts held in memory at `MAX_IN_FLIGHT` (about MAX_IN_FLIGHT x part_size bytes). Any
error aborts the upload, after the pool has drained, so no orphan parts keep costing storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

MIB = 1024 * 1024
PART_SIZE = 64 * MIB  # default part size; files larger than one part go up as multipart
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000  # S3's limit on parts per upload
MAX_IN_FLIGHT = 4  # parts read but not yet uploaded: bounds memory and concurrency


def check_part_size(part_size: int) -> None:
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(f"part_size must be between 5 MiB and 5 GiB (S3 limits), got {part_size} bytes")


def upload_multipart(client: Any, bucket: str, key: str, handle: BinaryIO, size: int, part_size: int) -> str:
    """Upload what `handle` holds (`size` bytes) to s3://bucket/key in parts; returns its sha256 hex.

    Raises the client's error after aborting the upload; translating it is the caller's job.
    """
    part_size = max(part_size, -(-size // MAX_PARTS))  # huge files: bigger parts, not >10k parts
    in_flight = MAX_IN_FLIGHT
    upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    slots = threading.BoundedSemaphore(in_flight)
    failed = threading.Event()

    def send(number: int, box: list[bytes]) -> dict:
        body = box.pop()  # the only reference, so the part is freed as soon as it is sent
        try:
            response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
            return {"PartNumber": number, "ETag": response["ETag"]}
        except BaseException:
            failed.set()
            raise
        finally:
            del body
            slots.release()

    digest = hashlib.sha256()
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="s3-part")
    try:
        futures = []
        while True:
            slots.acquire()
            data = b"" if failed.is_set() else handle.read(part_size)
            if not data:
                slots.release()
                break
            digest.update(data)
            futures.append(pool.submit(send, len(futures) + 1, [data]))
            del data
        parts = [future.result() for future in futures]  # raises the first part's error, if any
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except BaseException:
        # Drain first: a part still in flight could otherwise land after the abort.
        pool.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        pool.shutdown(wait=True)
    return digest.hexdigest()
