"""vitlrp.download and scripts/download_cub.py against a local HTTP server (no internet)."""
import functools
import hashlib
import http.server
import io
import tarfile
import threading

import pytest
from conftest import error_lines, run_script, run_script_inprocess

from vitlrp.download import check_members, extract_cub, fetch_cub
from vitlrp.errors import UserError


def make_archive(path, cub_root, extra=()):
    """A .tgz in the official layout: CUB_200_2011/... plus a top-level attributes.txt; ``extra`` adds members."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(cub_root, arcname="CUB_200_2011")
        data = b"1 has_bill_shape::curved_(up_or_down)\n"
        info = tarfile.TarInfo("attributes.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _snapshot(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """(folder, base_url): an HTTP server on 127.0.0.1 serving ``folder``."""
    for key in ("NO_PROXY", "no_proxy"):  # in-process requests must not go to a proxy either
        monkeypatch.setenv(key, "127.0.0.1,localhost")
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def served_archive(http_dir, cub_fixture):
    folder, base = http_dir
    archive = make_archive(folder / "CUB_200_2011.tgz", cub_fixture())
    return f"{base}/CUB_200_2011.tgz?download=1", md5(archive)


def test_download_extract_then_second_run_does_nothing(tmp_path, served_archive):
    url, digest = served_archive
    root = tmp_path / "data" / "raw" / "CUB_200_2011"
    flags = ("--dataset-root", root, "--url", url, "--fallback-url", "", "--expected-md5", digest)
    res = run_script("download_cub", *flags, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (root / "images.txt").is_file() and (root / "parts" / "part_locs.txt").is_file()
    assert not (root / "attributes.txt").exists()  # only the folder holding images.txt becomes DATASET_ROOT
    assert "CUB ready" in res.stdout and "6 images, 3 classes, 3 train / 3 test" in res.stdout
    parent = root.parent
    assert sorted(p.name for p in parent.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"]  # no .part/.extract
    assert md5(parent / "CUB_200_2011.tgz") == digest

    before = {p: p.stat().st_mtime_ns for p in parent.rglob("*")}
    code, out, err = run_script_inprocess("download_cub", *flags)
    assert code == 0, err
    assert "already present and verified" in out and "nothing to do" in out and "Downloading" not in out
    assert {p: p.stat().st_mtime_ns for p in parent.rglob("*")} == before


def test_bad_md5_deletes_the_partial_download(tmp_path, served_archive):
    url, digest = served_archive
    root = tmp_path / "data" / "CUB_200_2011"
    res = run_script("download_cub", "--dataset-root", root, "--url", url, "--fallback-url", "",
                     "--expected-md5", "0" * 32, cwd=tmp_path)
    assert res.returncode == 2
    errors = error_lines(res.stderr)
    assert len(errors) == 1 and "md5" in errors[0] and digest in errors[0] and "0" * 32 in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert not root.exists()
    assert list(root.parent.iterdir()) == []  # no .part, no .tgz, no dataset folder


def test_fallback_url_and_unreachable_urls(tmp_path, served_archive, http_dir):
    url, digest = served_archive
    _, base = http_dir
    root = tmp_path / "data" / "CUB_200_2011"
    log = []
    assert fetch_cub(root, urls=(f"{base}/missing.tgz", url), expected_md5=digest, progress=False,
                     log=log.append) == "extracted"
    assert any("missing.tgz" in line and "failed" in line for line in log)
    assert (root / "images.txt").is_file()

    other = tmp_path / "other" / "CUB_200_2011"
    with pytest.raises(UserError) as info:
        fetch_cub(other, urls=(f"{base}/missing.tgz", ""), expected_md5=digest, progress=False, log=log.append)
    assert "could not download" in str(info.value) and "--archive" in str(info.value)
    assert "\n" not in str(info.value)
    assert not other.exists() and list(other.parent.iterdir()) == []


def test_local_archive_with_verify_lists_corrupt_images(tmp_path, cub_fixture):
    archive = make_archive(tmp_path / "mine.tgz", cub_fixture(corrupt={4}))
    root = tmp_path / "data" / "CUB_200_2011"
    res = run_script("download_cub", "--dataset-root", root, "--archive", archive, "--url", "http://127.0.0.1:9/x",
                     "--fallback-url", "", "--expected-md5", md5(archive), "--verify", "true", cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Downloading" not in res.stdout
    unreadable = [line for line in res.stdout.splitlines() if "unreadable:" in line]
    assert len(unreadable) == 1 and "_0004_3.jpg" in unreadable[0]
    assert "Verified 6 images: 1 unreadable" in res.stdout
    assert (root / "images.txt").is_file() and archive.is_file()


def test_local_archive_without_md5_and_no_keep(tmp_path, cub_fixture):
    archive = make_archive(tmp_path / "mine.tgz", cub_fixture())
    root = tmp_path / "data" / "CUB_200_2011"
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                          "--expected-md5", "", "--keep-archive", "false", "--verify", "true")
    assert code == 0, err
    assert "Verified 6 images: 0 unreadable" in out
    assert archive.is_file()  # a user's own archive is never deleted


def test_local_archive_bad_md5_and_missing(tmp_path, cub_fixture):
    archive = make_archive(tmp_path / "mine.tgz", cub_fixture())
    root = tmp_path / "data" / "CUB_200_2011"
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                        "--expected-md5", "f" * 32)
    assert code == 2 and len(error_lines(err)) == 1 and "md5" in error_lines(err)[0]
    assert not root.exists() and archive.is_file()
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", tmp_path / "no.tgz")
    assert code == 2 and "does not exist" in error_lines(err)[0]


def _evil_member():
    info = tarfile.TarInfo("../evil.txt")
    info.size = 4
    return info, b"evil"


def _symlink_member():
    info = tarfile.TarInfo("CUB_200_2011/images/escape")
    info.type = tarfile.SYMTYPE
    info.linkname = "../../../outside"
    return info, None


def _hardlink_member():
    info = tarfile.TarInfo("CUB_200_2011/hard")
    info.type = tarfile.LNKTYPE
    info.linkname = "/etc/passwd"
    return info, None


@pytest.mark.parametrize("member,needle", [(_evil_member, "outside its folder"), (_symlink_member, "link"),
                                           (_hardlink_member, "link")])
def test_unsafe_archives_are_refused(tmp_path, cub_fixture, member, needle):
    src = cub_fixture()
    archive = make_archive(tmp_path / "bad.tgz", src, extra=[member()])
    with tarfile.open(archive) as tar, pytest.raises(UserError, match=needle):
        check_members(tar)

    work = tmp_path / "work"
    root = work / "data" / "CUB_200_2011"
    root.parent.mkdir(parents=True)
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                        "--expected-md5", "")
    assert code == 2
    assert len(error_lines(err)) == 1 and "refusing to extract" in error_lines(err)[0] and needle in err
    assert "Traceback" not in err
    if member is _evil_member:
        assert error_lines(err) == [
            "error: refusing to extract '../evil.txt': the archive has a path outside its folder"]
    assert _snapshot(work) == ["data"]  # nothing extracted, no temporary folder left
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()
    assert not (work / "outside").exists() and not (tmp_path / "outside").exists()


def test_extract_replaces_an_old_dataset_and_rejects_non_cub(tmp_path, cub_fixture):
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    (root / "stale.txt").write_text("old")
    extract_cub(make_archive(tmp_path / "a.tgz", cub_fixture()), root, progress=False)
    assert (root / "images.txt").is_file() and not (root / "stale.txt").exists()

    notcub = tmp_path / "notcub.tgz"
    with tarfile.open(notcub, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match="no images.txt"):
        extract_cub(notcub, tmp_path / "x" / "CUB", progress=False)
    (tmp_path / "garbage.tgz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a readable .tgz"):
        extract_cub(tmp_path / "garbage.tgz", tmp_path / "y" / "CUB", progress=False)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []
