"""storage: local paths and S3 round trips against a real SeaweedFS (the `s3` fixture)."""

from __future__ import annotations

import hashlib
import os

import pytest

from components.core import storage
from components.core.errors import StorageError
from pipelines.stack.processes import free_port

# ---------------------------------------------------------------- local


def test_local_round_trip_and_atomic_writes(tmp_path):
    target = tmp_path / "deep" / "er" / "x.json"
    storage.write_json(f"file://{target}", {"a": 1})
    assert storage.read_json(str(target)) == {"a": 1}
    storage.write_text(target, "replaced")
    assert storage.read_text(target) == "replaced"
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]  # no temp files left
    with pytest.raises(RuntimeError), storage.atomic_path(tmp_path / "y.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "y.txt").exists() and not list(tmp_path.glob(".y.txt*"))


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_outputs_get_the_usual_mode_under_the_umask(tmp_path, umask):
    storage.write_bytes(tmp_path / "mask.png", b"x")
    storage.write_json(tmp_path / "sub" / "metrics.json", {"a": 1})
    storage.copy(tmp_path / "mask.png", tmp_path / "copy.png")
    for name in ("mask.png", "sub/metrics.json", "copy.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    umask(0o027)
    storage.write_text(tmp_path / "report.html", "<html></html>")
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o640


def test_private_files_are_0600_from_the_first_byte(tmp_path, umask, monkeypatch):
    seen = []
    real_write_text = type(tmp_path).write_text

    def spy(self, *args, **kwargs):  # the mode while the secret goes in, not after
        seen.append(self.stat().st_mode & 0o777)
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(type(tmp_path), "write_text", spy)
    storage.write_private_text(tmp_path / "stack.env", "export SECRET=x\n")
    assert seen == [0o600]
    assert (tmp_path / "stack.env").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.part"))


def test_local_errors_name_the_path(tmp_path):
    with pytest.raises(StorageError, match=r"cannot read .*missing.txt: no such file"):
        storage.read_bytes(tmp_path / "missing.txt")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(StorageError, match="bad.json is not valid JSON"):
        storage.read_json(tmp_path / "bad.json")
    with pytest.raises(StorageError, match="needs a bucket"):
        storage.split_s3("s3:///key")


def test_local_dirs(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "1.txt").write_text("1")
    (src / "2.txt").write_text("2")
    assert storage.upload_dir(src, str(tmp_path / "dst")) == 2
    assert storage.download_dir(str(tmp_path / "dst"), tmp_path / "back") == 2
    assert (tmp_path / "back" / "a" / "b" / "1.txt").read_text() == "1"
    assert storage.list_files(tmp_path / "back") == sorted(
        [str(tmp_path / "back" / "2.txt"), str(tmp_path / "back" / "a" / "b" / "1.txt")]
    )


# ---------------------------------------------------------------- S3


def test_s3_bytes_json_exists_copy(s3):
    base = f"s3://{s3.bucket}/rt"
    storage.write_bytes(f"{base}/a.bin", b"\x00\x01abc")
    assert storage.read_bytes(f"{base}/a.bin") == b"\x00\x01abc"
    storage.write_json(f"{base}/b.json", {"k": [1, 2]})
    assert storage.read_json(f"{base}/b.json") == {"k": [1, 2]}
    assert storage.exists(f"{base}/a.bin") and not storage.exists(f"{base}/zzz")
    assert storage.exists(f"s3://{s3.bucket}")
    storage.copy(f"{base}/a.bin", f"{base}/copy/a.bin")
    assert storage.read_bytes(f"{base}/copy/a.bin") == b"\x00\x01abc"
    assert storage.is_dir(base) and not storage.is_dir(f"{base}/nothing-here")


def test_s3_multipart_50mb_round_trip(s3, tmp_path):
    big = tmp_path / "big.bin"
    data = os.urandom(50 * 1024 * 1024)
    big.write_bytes(data)
    uri = f"s3://{s3.bucket}/big/big.bin"
    storage.upload_file(big, uri)
    bucket, key = storage.split_s3(uri)
    head = storage.s3_client().head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"], "a 50 MB object must go up as a multipart upload"
    back = storage.download_file(uri, tmp_path / "back.bin")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not list(tmp_path.glob(".back.bin*"))


def test_s3_listing_paginates(s3):
    prefix = f"s3://{s3.bucket}/many"
    for i in range(23):
        storage.write_bytes(f"{prefix}/{i:03d}.txt", b"x")
    storage.write_bytes(f"s3://{s3.bucket}/many-other/not-me.txt", b"x")
    # Small pages so that 23 keys need several ListObjectsV2 calls against the real server
    # (a test-only hook on the page size; listing 1000+ keys would only make the test slow).
    client = storage.s3_client()
    pages = []

    def small_pages(params, **_):
        params["MaxKeys"] = 5
        pages.append(1)

    client.meta.events.register("before-parameter-build.s3.ListObjectsV2", small_pages)
    try:
        listed = storage.list_files(prefix)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", small_pages)
    assert listed == [f"{prefix}/{i:03d}.txt" for i in range(23)]
    assert len(pages) == 5


def test_s3_folder_upload_download(s3, tmp_path):
    src = tmp_path / "src"
    for rel in ("x/1.txt", "x/y/2.txt", "3.bin"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(rel.encode() * 100)
    prefix = f"s3://{s3.bucket}/folder"
    assert storage.upload_dir(src, prefix) == 3
    assert storage.list_files(prefix) == [
        f"{prefix}/3.bin",
        f"{prefix}/x/1.txt",
        f"{prefix}/x/y/2.txt",
    ]
    assert storage.download_dir(prefix + "/", tmp_path / "back") == 3
    for rel in ("x/1.txt", "x/y/2.txt", "3.bin"):
        assert (tmp_path / "back" / rel).read_bytes() == (src / rel).read_bytes()


def test_s3_local_input_and_output_dir(s3):
    prefix = f"s3://{s3.bucket}/stage-out"
    with storage.output_dir(prefix) as local:
        (local / "sub").mkdir()
        (local / "sub" / "r.txt").write_text("result")
    assert storage.read_text(f"{prefix}/sub/r.txt") == "result"
    with storage.local_input(f"{prefix}/sub/r.txt") as path:
        assert path.read_text() == "result"
    with storage.local_input(prefix) as folder:
        assert (folder / "sub" / "r.txt").read_text() == "result"
    # A re-run resumes: what is there is downloaded first.
    with storage.output_dir(prefix) as local:
        assert (local / "sub" / "r.txt").exists()
    with (
        pytest.raises(StorageError, match="no such object or prefix"),
        storage.local_input(f"{prefix}/nothing"),
    ):
        pass


# ---------------------------------------------------------------- S3 errors in words


def test_no_such_bucket(s3):
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-zz/k: no such bucket"):
        storage.read_bytes("s3://no-such-bucket-zz/k")
    with pytest.raises(StorageError, match="no such bucket"):
        storage.list_files("s3://no-such-bucket-zz/prefix")


def test_no_such_key(s3):
    with pytest.raises(StorageError, match=r"cannot read s3://.*/missing.txt: no such object"):
        storage.read_bytes(f"s3://{s3.bucket}/missing.txt")


def test_bad_credentials(s3, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="access denied.*AWS_SECRET_ACCESS_KEY"):
        storage.read_bytes(f"s3://{s3.bucket}/anything")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(StorageError, match=r"cannot upload to s3://.*: access denied"):
        storage.upload_file(tmp_path / "f.txt", f"s3://{s3.bucket}/f.txt")


def test_unreachable_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(StorageError, match="unreachable.*segloop up"):
        storage.read_bytes("s3://bucket/key")


def test_missing_credentials(monkeypatch, tmp_path, s3_server):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    # No shared files and no instance metadata: nothing but the environment can give keys.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(StorageError, match="no S3 credentials: set AWS_ACCESS_KEY_ID"):
        storage.read_bytes(f"s3://{s3_server.bucket}/x")
