"""Fetch, check and unpack the CUB-200-2011 archive; verify a CUB folder (annotations, every image, counts).

Nothing here removes or overwrites what it did not create: an existing CUB folder is only checked, the archive
is unpacked only into a missing or empty folder, and every download or extraction goes to a hidden temporary
name first and is renamed into place when complete.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .cub import OFFICIAL_COUNTS, format_counts, load_cub, nested_hint, split_counts
from .errors import UserError
from .fileio import ensure_writable_dir, write_json
from .preprocess import open_rgb
from .synthetic import MARKER as SYNTHETIC_MARKER

VERIFIED = ".verified.json"


class ArchiveError(UserError):
    """The archive itself is bad (unreadable, truncated, unsafe, not CUB): a downloaded copy is worth deleting."""

ARCHIVE_NAME = "CUB_200_2011.tgz"


def one_line(err):
    """The text of an exception on one line (tarfile, zlib and OS errors may span several)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def md5sum(path, progress=True):
    size = os.path.getsize(path)
    digest = hashlib.md5()
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc="md5",
                                      disable=not progress) as bar:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def download(url, dest, progress=True, timeout=60):
    """Stream ``url`` to ``dest`` with a progress bar; a failed or interrupted transfer leaves no file behind."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as err:
        dest.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        if isinstance(err, urllib.error.HTTPError):
            reason = f"HTTP {err.code} {err.reason}"
        raise OSError(f"download of {url} failed: {one_line(reason)}") from None
    except BaseException:  # Ctrl-C: no partial file either
        dest.unlink(missing_ok=True)
        raise


def check_members(tar):
    """Refuse any member that would land outside the target folder, and links or devices."""
    for member in tar.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
            raise ArchiveError(f"refusing to extract {member.name!r}: the archive has a path outside its folder")
        if member.issym() or member.islnk():
            raise ArchiveError(f"refusing to extract {member.name!r}: the archive has a link")
        if not (member.isfile() or member.isdir()):
            raise ArchiveError(f"refusing to extract {member.name!r}: not a regular file or folder")


def _is_empty_dir(path):
    return path.is_dir() and not any(path.iterdir())


def _refuse_existing(dataset_root):
    """Raise unless ``dataset_root`` is missing or an empty folder (the only places the archive is unpacked to)."""
    if dataset_root.is_file():
        raise UserError(f"dataset root {dataset_root} is a file, not a folder; pass the folder that holds (or will "
                        "hold) images.txt")
    if dataset_root.exists() and not _is_empty_dir(dataset_root):
        what = ("already holds a CUB folder" if (dataset_root / "images.txt").is_file()
                else "is not empty but has no images.txt" + nested_hint(dataset_root))
        raise UserError(f"{dataset_root} {what}; the archive is unpacked only into a missing or empty "
                        "folder (nothing is deleted): choose another dataset root, or move that folder away yourself")


def extract_cub(archive, dataset_root, progress=True, marker=None):
    """Unpack ``archive`` and move the folder holding ``images.txt`` to ``dataset_root``, atomically.

    ``dataset_root`` must be missing or an empty folder; it appears under its name only complete (annotations
    checked, and holding ``marker`` = ``(file name, JSON object)`` if given). Returns the annotations.
    """
    dataset_root = Path(dataset_root)
    _refuse_existing(dataset_root)
    ensure_writable_dir(dataset_root.parent, "the folder above the dataset root")
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=dataset_root.parent))
    try:
        try:
            with tarfile.open(archive) as tar:
                check_members(tar)  # reads the whole archive: a truncated one fails here, before any write
                members = tar.getmembers()
                for member in tqdm(members, desc="extract", unit="file", disable=not progress):
                    tar.extract(member, tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            if isinstance(err, OSError) and err.filename and not str(err.filename).startswith(str(archive)):
                raise UserError(f"cannot unpack {archive} beside {dataset_root}: {one_line(err)}") from None
            raise ArchiveError(f"{archive} is not a complete, readable .tgz archive ({one_line(err)})") from None
        found = sorted(tmp.rglob("images.txt"), key=lambda p: len(p.parts))
        if not found:
            raise ArchiveError(f"{archive} holds no images.txt: it is not the CUB-200-2011 archive")
        try:
            ann = load_cub(found[0].parent)
        except UserError as err:  # its paths name the temporary folder, which is removed below
            raise ArchiveError(f"{archive} holds an inconsistent CUB folder, not unpacked: {err}") from None
        if marker:
            write_json(found[0].parent / marker[0], marker[1])
        try:
            os.replace(found[0].parent, dataset_root)  # fails if another run filled dataset_root meanwhile
        except OSError as err:
            raise UserError(f"cannot move the unpacked folder to {dataset_root} ({one_line(err.strerror or err)}): "
                            "did another run create it meanwhile? It was left as it is") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dataclasses.replace(ann, root=dataset_root)


def _leftovers(parent):
    """Hidden temporary files of interrupted runs beside the dataset root (killed runs cannot clean up)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir()
                  if p.name.startswith(".extract.") or (p.name.startswith(f".{ARCHIVE_NAME}.")
                                                        and p.name.endswith(".part")))


def fetch_cub(dataset_root, urls, expected_md5, archive=None, keep_archive=True, progress=True, log=print):
    """Make ``dataset_root`` hold a CUB folder, touching nothing that is already there.

    An existing CUB folder (``images.txt`` present) is only checked (annotations), never downloaded over.
    A missing or empty ``dataset_root`` gets ``archive`` (or the archive already beside it, or a download from
    the first of ``urls`` that works), md5-checked against ``expected_md5`` ('' skips the check) before it is
    unpacked. Returns what was done: ``'present'`` (verified by an earlier run), ``'found'`` (a folder this
    module did not unpack), ``'extracted'``.
    """
    dataset_root = Path(dataset_root)
    if (dataset_root / "images.txt").is_file():
        return _existing(dataset_root, expected_md5, archive, log)
    _refuse_existing(dataset_root)  # before a long download, not after
    ensure_writable_dir(dataset_root.parent, "the folder above the dataset root")
    for path in _leftovers(dataset_root.parent):
        log(f"note: {path} is left from an interrupted run; delete it when no other download is running")

    downloaded, way_out = False, ""
    if archive:
        archive = Path(archive)
        if not archive.is_file():
            what = "is a folder" if archive.is_dir() else "does not exist"
            raise UserError(f"archive {archive} {what}; pass the path of {ARCHIVE_NAME}")
        digest = _check_md5(archive, expected_md5, progress)
    elif (dataset_root.parent / ARCHIVE_NAME).is_file():
        archive = dataset_root.parent / ARCHIVE_NAME
        log(f"Using the archive already at {archive}")
        way_out = f"; move {archive} away to download it again"
        digest = _check_md5(archive, expected_md5, progress, fix=way_out[2:])
    else:
        archive = dataset_root.parent / ARCHIVE_NAME
        digest = _download_any(urls, archive, expected_md5, progress, log)
        downloaded = True

    log(f"Extracting {archive} -> {dataset_root}")
    try:
        ann = extract_cub(archive, dataset_root, progress,
                          marker=(VERIFIED, {"md5": digest, "md5_checked": bool(expected_md5)}))
    except ArchiveError as err:
        if downloaded:  # else the next run would reuse the bad file (possible only with the md5 check skipped)
            archive.unlink(missing_ok=True)
            raise UserError(f"{err}; the downloaded {archive.name} was deleted", fix="archive_retry") from None
        raise UserError(f"{err}{way_out}") from None
    if downloaded and not keep_archive:
        archive.unlink()  # only an archive this run downloaded; a user's own file stays
    log(f"CUB ready at {dataset_root}: {format_counts(split_counts(ann))}")
    return "extracted"


def _check_md5(archive, expected_md5, progress, fix="skip_md5"):
    digest = md5sum(archive, progress)
    if expected_md5 and digest != expected_md5:
        raise UserError(f"md5 of {archive} is {digest}, expected {expected_md5}: not the official archive", fix=fix)
    return digest


def _download_any(urls, archive, expected_md5, progress, log):
    """Download to a private hidden name (two runs at once do not mix), md5-check, then rename to ``archive``."""
    fd, part = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    os.close(fd)
    part = Path(part)
    try:
        errors = []
        for url in [u for u in urls if u]:
            log(f"Downloading {url}")
            try:
                download(url, part, progress)
                break
            except OSError as err:
                errors.append(str(err))
                log(f"  {err}")
        else:
            raise UserError(f"could not download CUB ({'; '.join(errors) or 'no URL given'})",
                            fix="archive_by_hand")
        digest = md5sum(part, progress)
        if expected_md5 and digest != expected_md5:
            raise UserError(f"md5 mismatch for the download: got {digest}, expected {expected_md5}; the partial "
                            "file was deleted", fix="archive_retry")
        os.chmod(part, 0o644)
        os.replace(part, archive)
    finally:
        part.unlink(missing_ok=True)
    return digest


def _existing(dataset_root, expected_md5, archive, log):
    """A folder that already holds images.txt: check its annotations, say what it is; download nothing."""
    ann = load_cub(dataset_root)
    counts = format_counts(split_counts(ann))
    if archive:
        raise UserError(f"{dataset_root} already holds a CUB folder ({counts}); it is never unpacked over: choose "
                        f"another dataset root for {archive}", fix="drop_archive")
    info = _read_marker(dataset_root)
    if info.get("md5") and (not expected_md5 or info["md5"] == expected_md5):
        log(f"CUB already present and verified at {dataset_root} ({len(ann.paths)} images, md5 {info['md5']}); "
            "nothing to do")
        return "present"
    why = (f"unpacked from an archive with md5 {info['md5']}, not {expected_md5}" if info.get("md5")
           else "not unpacked by this script")
    log(f"CUB folder found at {dataset_root} ({counts}; {why}): annotations consistent, nothing downloaded, "
        "images not decoded")
    return "found"


def _read_marker(dataset_root):
    try:
        info = json.loads((dataset_root / VERIFIED).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def find_unreadable(ann, workers=8, progress=True):
    """Decode every image of ``ann``; return ``[(path, message)]`` of those that fail."""
    def check(row):
        try:
            open_rgb(ann.image_path(row))
            return None
        except OSError as err:
            return str(ann.image_path(row)), str(err)

    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(check, range(len(ann.paths))), total=len(ann.paths), desc="verify",
                            unit="img", disable=not progress))
    return [r for r in results if r is not None]


def verify_cub(dataset_root, progress=True, log=print):
    """Check a CUB folder: annotations (``load_cub``), every image decodes, counts per split, official counts.

    Reads only. Counts that differ from the official CUB-200-2011 are a warning line (a subset is legitimate);
    the synthetic mini-CUB is not compared. Returns ``[(path, message)]`` of the unreadable images.
    """
    ann = load_cub(dataset_root)
    bad = find_unreadable(ann, progress=progress)
    for _, message in bad:
        log(f"  unreadable: {one_line(message)}")
    counts = split_counts(ann)
    log(f"Verified {len(ann.paths)} images: {len(bad)} unreadable")
    log(f"Counts: {format_counts(counts)}")
    if (Path(dataset_root) / SYNTHETIC_MARKER).is_file():
        log(f"The synthetic mini-CUB ({SYNTHETIC_MARKER}): not compared with the official CUB-200-2011 counts")
    elif counts != OFFICIAL_COUNTS:
        log(f"warning: the official CUB-200-2011 has {format_counts(OFFICIAL_COUNTS)}; this folder differs "
            "(fine for a subset, otherwise the folder is incomplete)")
    else:
        log("Counts match the official CUB-200-2011")
    return bad
