"""A real S3-compatible HTTP server on 127.0.0.1 for tests (moto's server, in a thread).

    with S3Server() as s3:              # sets AWS_ENDPOINT_URL and test credentials while it runs
        uri = s3.bucket("runs")         # "s3://runs", created empty
        ...                             # pyarrow's S3 filesystem (and lvr1) talk HTTP to it

``s3.env`` holds the variables a subprocess needs to reach it.
"""

from __future__ import annotations

import logging
import os


class S3Server:
    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.env: dict[str, str] = {}
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> "S3Server":
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "lvr1-test",
                    "AWS_SECRET_ACCESS_KEY": "lvr1-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true"}
        for key, value in self.env.items():
            self._saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def bucket(self, name: str) -> str:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=self.endpoint.split("://", 1)[1], scheme="http",
                               allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"

    def __exit__(self, *exc) -> None:
        self._server.stop()
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
