"""Put the digits data set into an S3 bucket as the S3 example reads it.

    python examples/s3/upload.py ENDPOINT [BUCKET]    (credentials: the AWS_* variables)
"""

from __future__ import annotations

import io
import sys

import boto3
import numpy as np
from sklearn.datasets import load_digits


def upload(endpoint: str, bucket: str = "kubetrain-examples", key: str = "digits.npz",
           credentials: dict[str, str] | None = None) -> None:
    digits = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, X=digits.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0,
             y=digits.target.astype(np.int64))
    keys = credentials or {}
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
                      aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"))
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    print(f"s3://{bucket}/{key}: {len(digits.target)} images")


if __name__ == "__main__":
    upload(sys.argv[1], *sys.argv[2:3])
