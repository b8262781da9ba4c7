"""The throwaway servers the shared-store tests stand on answer like the real thing they are."""

from __future__ import annotations

import boto3
import sqlalchemy as sa


def test_postgres_runs_sql(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x int)"))
        conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
        assert conn.execute(sa.text("SELECT sum(x) FROM t")).scalar() == 3
    engine.dispose()


def test_s3_round_trip(s3) -> None:
    s3.create_bucket("roundtrip")
    env = s3.env()
    client = boto3.client("s3", endpoint_url=s3.endpoint,
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                          region_name=env["AWS_DEFAULT_REGION"])
    client.put_object(Bucket="roundtrip", Key="a/b.bin", Body=b"\x00" * 1000)
    assert client.get_object(Bucket="roundtrip", Key="a/b.bin")["Body"].read() == b"\x00" * 1000
    client.delete_object(Bucket="roundtrip", Key="a/b.bin")
    assert client.list_objects_v2(Bucket="roundtrip").get("KeyCount") == 0
