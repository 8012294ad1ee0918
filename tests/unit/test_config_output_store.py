"""OUTPUT_STORE_URL and the S3 settings: unset means the local OUTPUT_DIR, s3:// URLs
name a bucket (and prefix), anything else stops start-up naming the variable; the
usual AWS variables are read as settings, the secret masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator import errors
from orchestrator.config import load_settings


@pytest.fixture
def cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "cfg" / "orchestrator.toml"
    path.parent.mkdir()
    return path


def test_unset_is_local(cfg_file: Path) -> None:
    s = load_settings(config_file=cfg_file)
    assert s.output_store_url is None
    assert s.output_store_s3 is None
    assert s.output_store_presign_s == 0


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [("s3://media", "media", ""), ("s3://media/studio/a/", "media", "studio/a")],
)
def test_s3_url(cfg_file: Path, url: str, bucket: str, prefix: str) -> None:
    s = load_settings(config_file=cfg_file, overrides={"output_store_url": url})
    assert s.output_store_s3 is not None
    assert (s.output_store_s3.bucket, s.output_store_s3.prefix) == (bucket, prefix)


def test_a_local_path_is_the_output_folder(cfg_file: Path) -> None:
    cfg_file.write_text('output_store_url = "elsewhere/outputs"\n')
    s = load_settings(config_file=cfg_file)
    assert s.output_store_s3 is None
    assert s.output_path == cfg_file.parent / "elsewhere" / "outputs"


@pytest.mark.parametrize(
    "url", ["http://bucket/x", "gs://bucket", "s3://", "s3://b/../x", "ftp://h/p"]
)
def test_other_schemes_are_refused(cfg_file: Path, url: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file, overrides={"output_store_url": url})
    assert "output_store_url" in str(info.value.problems).lower()


def test_aws_variables(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTPUT_STORE_URL", "s3://media/p")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-value")
    monkeypatch.setenv("OUTPUT_STORE_PRESIGN_S", "300")
    s = load_settings(config_file=cfg_file)
    assert s.aws_endpoint_url == "http://127.0.0.1:9000"
    assert s.aws_region == "eu-west-3"
    assert s.aws_access_key_id == "AKIAEXAMPLE"
    assert s.aws_secret_access_key is not None
    assert s.aws_secret_access_key.get_secret_value() == "very-secret-value"
    assert "very-secret-value" not in repr(s)
    assert s.output_store_presign_s == 300
    monkeypatch.setenv("AWS_REGION", "eu-north-1")  # AWS_REGION wins, as in the AWS CLI
    assert load_settings(config_file=cfg_file).aws_region == "eu-north-1"
