"""A real S3 API server for the tests: moto's server mode in its own process, with IAM
authentication on, so a wrong key is refused as a real endpoint refuses it."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support import EXAMPLES, free_port, wait_for_port

BUCKET = "kubetrain-examples"
SETUP_CALLS = 3  # create_user, create_access_key, put_user_policy: before auth is enforced


@dataclass
class S3Server:
    port: int
    access_key: str
    secret_key: str

    def endpoint(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint(), region_name="us-east-1",
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto")
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    # 0.0.0.0: pods of the local cluster reach it at the node's address.
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, 30, "moto server")
        iam = boto3.client("iam", endpoint_url=f"http://127.0.0.1:{port}",
                           region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="kubetrain")
        key = iam.create_access_key(UserName="kubetrain")["AccessKey"]
        iam.put_user_policy(UserName="kubetrain", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        server = S3Server(port, key["AccessKeyId"], key["SecretAccessKey"])
        upload = runpy.run_path(str(EXAMPLES / "s3" / "upload.py"))["upload"]
        upload(server.endpoint(), BUCKET, credentials=server.env())
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)
