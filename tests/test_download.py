"""vitlrp.download and scripts/download_cub.py against a local HTTP server (no internet)."""
import functools
import hashlib
import http.server
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading

import pytest
from conftest import REPO_ROOT, error_lines, run_script, run_script_inprocess

from vitlrp.cli import message as cli_message
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
    assert "could not download" in str(info.value) and "--archive" in cli_message(info.value)
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


def test_extract_never_replaces_a_folder_and_rejects_non_cub(tmp_path, cub_fixture):
    # deliberately changed (reliability audit): an existing non-empty folder is refused, not replaced
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    archive = make_archive(tmp_path / "a.tgz", cub_fixture())
    with pytest.raises(UserError, match="not empty.*move that folder away"):
        extract_cub(archive, root, progress=False)
    assert _snapshot(root) == ["mine.txt"] and (root / "mine.txt").read_text() == "user data"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (root / "mine.txt").unlink()  # an empty folder is filled
    extract_cub(archive, root, progress=False)
    assert (root / "images.txt").is_file()

    notcub = tmp_path / "notcub.tgz"
    with tarfile.open(notcub, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(UserError, match="no images.txt"):
        extract_cub(notcub, tmp_path / "x" / "CUB", progress=False)
    (tmp_path / "garbage.tgz").write_bytes(b"not an archive")
    with pytest.raises(UserError, match="not a complete, readable .tgz"):
        extract_cub(tmp_path / "garbage.tgz", tmp_path / "y" / "CUB", progress=False)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == []


# --- reliability: nothing lost, nothing misleading -------------------------------------------------------------

def _no_hidden_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_verify_an_existing_folder_only_checks_it(tmp_path, served_archive, cub_fixture):
    """A CUB folder the user has (no marker) is verified in place: no download, nothing deleted, counts printed."""
    url, digest = served_archive
    root = cub_fixture()
    (root / "my_notes.txt").write_text("mine")
    before = _snapshot(root)
    flags = ("--dataset-root", root, "--url", url, "--fallback-url", "", "--expected-md5", digest)
    code, out, err = run_script_inprocess("download_cub", *flags, "--verify", "true")
    assert code == 0, err
    assert "Downloading" not in out and "Extracting" not in out
    assert "CUB folder found at" in out and "nothing downloaded" in out
    assert "Verified 6 images: 0 unreadable" in out
    assert "Counts: 6 images, 3 classes, 3 train / 3 test" in out
    warning = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "11,788 images, 200 classes, 5,994 train / 5,794 test" in warning[0]
    assert _snapshot(root) == before and (root / "my_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in root.parent.iterdir()) == ["CUB_200_2011"]  # no archive was fetched

    # without VERIFY: annotations checked, still nothing fetched; a broken image makes VERIFY exit 1
    code, out, err = run_script_inprocess("download_cub", *flags)
    assert code == 0 and "nothing downloaded" in out and "Verified" not in out, err
    (root / "images" / "001.Black_footed_Albatross" / "Black_footed_Albatross_0001_0.jpg").write_bytes(b"oops")
    code, out, err = run_script_inprocess("download_cub", *flags, "--verify", "true")
    assert code == 1, err
    assert "Verified 6 images: 1 unreadable" in out and "unreadable: cannot read image" in out
    assert _snapshot(root) == before


def test_verify_says_when_counts_match_and_skips_the_synthetic_cub(tmp_path, cub_fixture, monkeypatch):
    from vitlrp import download
    from vitlrp.synthetic import make_synthetic_cub

    root = cub_fixture()
    monkeypatch.setattr(download, "OFFICIAL_COUNTS", {"images": 6, "classes": 3, "train": 3, "test": 3})
    log = []
    assert download.verify_cub(root, progress=False, log=log.append) == []
    assert log[-1] == "Counts match the official CUB-200-2011" and not any("warning" in x for x in log)

    mini = make_synthetic_cub(tmp_path / "mini" / "CUB_200_2011", 2, 2, progress=False)
    log = []
    download.verify_cub(mini, progress=False, log=log.append)
    assert "Counts: 4 images, 2 classes, 2 train / 2 test" in log
    assert "not compared" in log[-1] and not any("warning" in x for x in log)


def test_a_folder_is_never_unpacked_over(tmp_path, served_archive, cub_fixture):
    url, digest = served_archive
    # an existing CUB folder and --archive: refused, folder untouched
    root = cub_fixture()
    before = _snapshot(root)
    archive = make_archive(tmp_path / "mine.tgz", cub_fixture())
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                        "--expected-md5", "")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert "already holds a CUB folder" in err and "never unpacked over" in err
    assert _snapshot(root) == before

    # a non-empty folder without images.txt: refused before any download, with the folder it probably meant
    parent = tmp_path / "dataset" / "raw"
    inner = parent / "CUB_200_2011"
    inner.mkdir(parents=True)
    (inner / "images.txt").write_text("")
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", parent, "--url", url,
                                          "--fallback-url", "", "--expected-md5", digest)
    assert code == 2 and len(error_lines(err)) == 1 and "Downloading" not in out, err
    assert "is not empty but has no images.txt" in err and f"but {inner} has: pass that folder" in err
    assert sorted(p.name for p in parent.iterdir()) == ["CUB_200_2011"]


def _truncated(tmp_path, cub_fixture):
    whole = make_archive(tmp_path / "whole.tgz", cub_fixture()).read_bytes()
    return whole[: len(whole) // 2]


def test_truncated_archive_without_md5_check(tmp_path, http_dir, cub_fixture):
    folder, base = http_dir
    (folder / "CUB_200_2011.tgz").write_bytes(_truncated(tmp_path, cub_fixture))
    work = tmp_path / "work"
    root = work / "data" / "CUB_200_2011"
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--url", f"{base}/CUB_200_2011.tgz",
                                        "--fallback-url", "", "--expected-md5", "")
    assert code == 2 and "Traceback" not in err
    errors = error_lines(err)
    assert len(errors) == 1 and "is not a complete, readable .tgz archive" in errors[0], err
    assert errors[0].endswith("; the downloaded CUB_200_2011.tgz was deleted; run again, or pass --archive PATH")
    assert list(root.parent.iterdir()) == []  # no folder, no bad archive a re-run would reuse, no temporary files
    make_archive(folder / "CUB_200_2011.tgz", cub_fixture())  # the server is fixed: the re-run downloads again
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", root, "--url",
                                          f"{base}/CUB_200_2011.tgz", "--fallback-url", "", "--expected-md5", "")
    assert code == 0 and "Downloading" in out and (root / "images.txt").is_file(), err

    # the same archive given by hand
    local = tmp_path / "cut.tgz"
    local.write_bytes(_truncated(tmp_path, cub_fixture))
    other = work / "other" / "CUB_200_2011"
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", other, "--archive", local,
                                        "--expected-md5", "")
    assert code == 2 and len(error_lines(err)) == 1 and "not a complete, readable" in err and "Traceback" not in err
    assert not other.exists() and _no_hidden_leftovers(other.parent)


def test_an_interrupted_extraction_leaves_no_folder_under_the_final_name(tmp_path, cub_fixture, monkeypatch):
    archive = make_archive(tmp_path / "a.tgz", cub_fixture())
    root = tmp_path / "data" / "CUB_200_2011"
    calls = []
    real_extract = tarfile.TarFile.extract

    def ctrl_c_after_three(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real_extract(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", ctrl_c_after_three)
    with pytest.raises(KeyboardInterrupt):
        fetch_cub(root, urls=(), expected_md5="", archive=archive, progress=False, log=lambda _: None)
    assert not root.exists() and _no_hidden_leftovers(root.parent)


def test_a_killed_extraction_then_a_rerun(tmp_path, cub_fixture):
    """SIGKILL halfway (no cleanup possible): nothing under the final name; the next run notes the leftover."""
    archive = make_archive(tmp_path / "a.tgz", cub_fixture())
    root = tmp_path / "data" / "CUB_200_2011"
    code = (
        "import os, signal, tarfile, sys\n"
        "from vitlrp.download import fetch_cub\n"
        "real, n = tarfile.TarFile.extract, [0]\n"
        "def extract(self, *a, **k):\n"
        "    n[0] += 1\n"
        "    if n[0] > 5: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, *a, **k)\n"
        "tarfile.TarFile.extract = extract\n"
        "fetch_cub(sys.argv[1], urls=(), expected_md5='', archive=sys.argv[2], progress=False)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    res = subprocess.run([sys.executable, "-c", code, str(root), str(archive)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not root.exists()
    leftovers = [p for p in root.parent.iterdir() if p.name.startswith(".extract.")]
    assert len(leftovers) == 1
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                          "--expected-md5", "")
    assert code == 0, err
    assert f"note: {leftovers[0]} is left from an interrupted run" in out
    assert (root / "images.txt").is_file() and (root / ".verified.json").is_file()


@pytest.mark.parametrize("order", ["both_unpacked", "one_after_the_other"])
def test_two_runs_at_once(tmp_path, served_archive, monkeypatch, order):
    """Two runs into the same root at the same time: each uses its own temporary names; one folder results,
    the other run says why it stopped, and the archive both used is kept.

    The losing run's words depend on when it finds the other's folder, so the test sets the order: both runs have
    unpacked and checked their folder before either moves it (the loser's move fails), or the second starts
    unpacking only when the first has finished (the loser finds the folder there).
    """
    from vitlrp import download

    url, digest = served_archive
    root = tmp_path / "data" / "CUB_200_2011"
    started, both_downloaded = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    both_unpacked, first_done = threading.Barrier(2, timeout=30), threading.Event()
    real_extract, real_load = download.extract_cub, download.load_cub

    def load_then_wait(folder):  # inside extract_cub: unpacked into a temporary folder, not yet moved to root
        ann = real_load(folder)
        both_unpacked.wait()
        return ann

    def extract_in_turn(*args, **kwargs):
        both_downloaded.wait()  # both have passed every check before the archive, so both reach the extraction
        if threading.current_thread().name == "second":
            assert first_done.wait(30)
        try:
            return real_extract(*args, **kwargs)
        finally:
            first_done.set()

    if order == "both_unpacked":
        monkeypatch.setattr(download, "load_cub", load_then_wait)
    else:
        monkeypatch.setattr(download, "extract_cub", extract_in_turn)
    outcomes = {}

    def one_run():
        started.wait()
        try:
            outcome = fetch_cub(root, urls=(url,), expected_md5=digest, progress=False, log=lambda _: None)
        except UserError as err:
            outcome = str(err)
        outcomes[threading.current_thread().name] = outcome

    threads = [threading.Thread(target=one_run, name=name) for name in ("first", "second")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won, lost = sorted(outcomes.values(), key=len)
    assert won == "extracted", outcomes
    if order == "both_unpacked":
        assert lost.startswith(f"cannot move the unpacked folder to {root} (") and lost.endswith(
            "): did another run create it meanwhile? It was left as it is"), outcomes
    else:
        assert outcomes["first"] == "extracted" and outcomes["second"].startswith(
            f"{root} already holds a CUB folder; the archive is unpacked only into a missing or empty folder"), outcomes
    assert (root / "images.txt").is_file() and _no_hidden_leftovers(root.parent)
    assert sorted(p.name for p in root.parent.iterdir()) == ["CUB_200_2011", "CUB_200_2011.tgz"]


def test_unwritable_places_and_a_file_as_dataset_root(tmp_path, served_archive):
    url, digest = served_archive
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    flags = ("--url", url, "--fallback-url", "", "--expected-md5", digest)
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", blocker / "CUB_200_2011", *flags)
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert f"{blocker}: it is a file, not a folder" in err and "Downloading" not in out
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", blocker, *flags, "--verify", "true")
    assert code == 2 and error_lines(err) == [
        f"error: dataset root {blocker} is a file, not a folder; pass the folder that holds (or will hold) "
        "images.txt"], err
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores read-only permissions, so nothing would be refused")
def test_read_only_parent(tmp_path, served_archive):
    url, digest = served_archive
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, out, err = run_script_inprocess("download_cub", "--dataset-root", locked / "CUB_200_2011", "--url",
                                              url, "--fallback-url", "", "--expected-md5", digest)
        assert code == 2 and len(error_lines(err)) == 1 and "cannot write to" in err and "Downloading" not in out
    finally:
        locked.chmod(0o755)


def test_archive_already_beside_the_root_is_reused_and_kept(tmp_path, cub_fixture):
    parent = tmp_path / "data"
    parent.mkdir()
    archive = make_archive(parent / "CUB_200_2011.tgz", cub_fixture())
    root = parent / "CUB_200_2011"
    flags = ("--dataset-root", root, "--url", "http://127.0.0.1:9/none", "--fallback-url", "")
    code, out, err = run_script_inprocess("download_cub", *flags, "--expected-md5", "0" * 32)
    assert code == 2 and f"; move {archive} away to download it again" in err
    assert archive.is_file() and not root.exists()
    code, out, err = run_script_inprocess("download_cub", *flags, "--expected-md5", md5(archive),
                                          "--keep-archive", "false")
    assert code == 0, err
    assert f"Using the archive already at {archive}" in out and "Downloading" not in out
    assert archive.is_file()  # not downloaded by this run, so not deleted


def test_errors_become_one_line():
    from vitlrp.download import one_line

    assert one_line(OSError("first line\n  second line\n")) == "first line second line"
    assert one_line(EOFError()) == "EOFError"


def test_an_archive_with_broken_annotations_is_not_unpacked(tmp_path, cub_fixture):
    src = cub_fixture()
    (src / "classes.txt").write_text("1 001.A\n1 002.B\n")
    archive = make_archive(tmp_path / "bad.tgz", src)
    root = tmp_path / "data" / "CUB_200_2011"
    code, _, err = run_script_inprocess("download_cub", "--dataset-root", root, "--archive", archive,
                                        "--expected-md5", "")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert f"{archive} holds an inconsistent CUB folder, not unpacked:" in err
    assert "classes.txt:2: class id 1 repeats line 1 ('1 001.A')" in err
    assert not root.exists() and _no_hidden_leftovers(root.parent)
