#!/usr/bin/env python3
"""A real S3-compatible HTTP server for cobb's tests: moto's server, with authentication ON.

Starts moto on 127.0.0.1:PORT, creates an IAM user with an access key allowed to do everything
and a bucket, then turns on moto's request authentication (SigV4 signatures and access keys are
checked from then on), and writes the settings the tests read to ENV_FILE:

    COBB_TEST_S3_ENDPOINT, COBB_TEST_S3_REGION, COBB_TEST_S3_BUCKET,
    COBB_TEST_S3_ACCESS_KEY_ID, COBB_TEST_S3_SECRET_ACCESS_KEY

Usage: s3_test_server.py PORT ENV_FILE   (runs until killed; .ci/run starts and stops it)
Needs `moto[server]` (pip install 'moto[server]'); see docs/deploy.md.
"""

import json
import sys
import time

import boto3
from moto import settings
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
BUCKET = "cobb-test"


def main() -> None:
    port, env_file = int(sys.argv[1]), sys.argv[2]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Authentication is off until the user, its key and the bucket exist.
    anyone = dict(endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anyone)
    iam.create_user(UserName="cobb")
    iam.put_user_policy(
        UserName="cobb",
        PolicyName="everything",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )
    key = iam.create_access_key(UserName="cobb")["AccessKey"]
    boto3.client("s3", **anyone).create_bucket(Bucket=BUCKET)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    # Prove it: the key works and a wrong secret does not.
    good = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                        aws_secret_access_key=key["SecretAccessKey"])
    good.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
    good.delete_object(Bucket=BUCKET, Key="probe")
    bad = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                       aws_secret_access_key="wrong")
    try:
        bad.put_object(Bucket=BUCKET, Key="probe", Body=b"no")
        sys.exit("moto accepted a wrong secret: authentication is not on")
    except bad.exceptions.ClientError:
        pass
    with open(env_file, "w") as out:
        out.write(f"COBB_TEST_S3_ENDPOINT={endpoint}\nCOBB_TEST_S3_REGION={REGION}\nCOBB_TEST_S3_BUCKET={BUCKET}\n")
        out.write(f"COBB_TEST_S3_ACCESS_KEY_ID={key['AccessKeyId']}\nCOBB_TEST_S3_SECRET_ACCESS_KEY={key['SecretAccessKey']}\n")
    print(f"S3 test server on {endpoint}, bucket {BUCKET}, authentication on", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
