"""What the EC2 API scripts share: clients for an endpoint, and checks
that say what was expected and what came back."""

import sys

import boto3
import botocore.config
from botocore.exceptions import ClientError

CHECKS = []


def client(endpoint, service="ec2"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


def check(cond, what):
    CHECKS.append(what)
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)


def fails(code, what, f, *args, **kwargs):
    """Calls f and checks that EC2 answers the error `code`."""
    try:
        f(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"{what}: error {code} (got {got}: {e.response['Error'].get('Message')})")
        return e
    check(False, f"{what}: error {code} (the call succeeded)")


def done(name):
    print(f"{name}: {len(CHECKS)} checks passed")
