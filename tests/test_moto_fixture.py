from __future__ import annotations


def test_moto_server_is_a_real_http_endpoint_on_loopback(aws):
    import boto3

    assert aws.startswith("http://127.0.0.1:")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="fixture-check")
    s3.put_object(Bucket="fixture-check", Key="a.txt", Body=b"hello")
    assert s3.get_object(Bucket="fixture-check", Key="a.txt")["Body"].read() == b"hello"
    assert s3.meta.endpoint_url == aws


def test_moto_state_is_reset_between_tests(aws):
    import boto3

    assert "fixture-check" not in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]
