"""One AWS call in its own process: the stand-in for one `aws ...` CLI command of the old script.

Usage: python bench/old_tool_call.py SERVICE OPERATION JSON_PARAMS [DOWNLOAD_PATH]

Like the AWS CLI, each process starts an interpreter, imports the SDK, resolves credentials from
the instance metadata service (no static keys), makes exactly one call and prints the response as
JSON. With DOWNLOAD_PATH the call is `s3 get_object` and the body is written there (`aws s3 cp`).
Kept free of project imports so its start-up cost is the SDK's alone.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    service, operation, params = argv[0], argv[1], json.loads(argv[2])
    import boto3

    client = boto3.client(service)
    response = getattr(client, operation)(**params)
    if len(argv) > 3:
        with open(argv[3], "wb") as out:
            out.write(response["Body"].read())
        response = {"ContentLength": response.get("ContentLength")}
    response.pop("ResponseMetadata", None)
    json.dump(response, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
