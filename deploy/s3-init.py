"""Create the fleet's buckets (idempotent) and put their lifecycle rules; exit 0 when done.

    python s3-init.py --endpoint-url http://seaweedfs:8333 \
        --bucket spacy-cache:/etc/spacy-index/lifecycle.json --bucket spacy-index

``--bucket NAME[:LIFECYCLE.json]`` (repeatable). Credentials come from the standard AWS
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Waits up to --wait seconds for the
endpoint. One line per bucket; one ``error: …`` line and exit 1 on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint-url", default=None)
    p.add_argument("--bucket", action="append", required=True, metavar="NAME[:LIFECYCLE]")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS")
    args = p.parse_args(argv)

    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = boto3.session.Session().client("s3", endpoint_url=args.endpoint_url, config=Config(
        retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30))
    deadline = time.monotonic() + args.wait
    while True:
        try:
            s3.list_buckets()
            break
        except (BotoCoreError, ClientError) as e:
            if time.monotonic() > deadline:
                print(f"error: {args.endpoint_url or 'S3'} did not answer: {e}", file=sys.stderr)
                return 1
            time.sleep(1)
    for spec in args.bucket:
        name, _, lifecycle = spec.partition(":")
        try:
            try:
                s3.create_bucket(Bucket=name)
                what = "created"
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in (
                        "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
                what = "exists"
            if lifecycle:
                rules = json.loads(Path(lifecycle).read_text())
                s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration=rules)
                got = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
                what += f", {len(got)} lifecycle rule(s)"
        except (BotoCoreError, ClientError, OSError, ValueError) as e:
            print(f"error: bucket {name!r}: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
