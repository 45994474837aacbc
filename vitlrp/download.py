"""Fetch, check and unpack the CUB-200-2011 archive; decode-check every image on request."""
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from .cub import load_cub
from .errors import UserError
from .preprocess import open_rgb

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
CUB_FALLBACK_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
VERIFIED = ".verified.json"


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
    """Stream ``url`` to ``dest`` with a progress bar; a failed transfer leaves no file behind."""
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
        raise OSError(f"download of {url} failed: {reason}") from None


def check_members(tar):
    """Refuse any member that would land outside the target folder, and links or devices."""
    for member in tar.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
            raise UserError(f"refusing to extract {member.name!r}: the archive has a path outside its folder")
        if member.issym() or member.islnk():
            raise UserError(f"refusing to extract {member.name!r}: the archive has a link")
        if not (member.isfile() or member.isdir()):
            raise UserError(f"refusing to extract {member.name!r}: not a regular file or folder")


def extract_cub(archive, dataset_root, progress=True):
    """Unpack ``archive`` and move the folder holding ``images.txt`` to ``dataset_root``, atomically."""
    dataset_root = Path(dataset_root)
    dataset_root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=dataset_root.parent))
    try:
        try:
            tar = tarfile.open(archive)
        except (tarfile.TarError, OSError) as err:
            raise UserError(f"{archive} is not a readable .tgz archive: {err}") from None
        with tar:
            check_members(tar)
            members = tar.getmembers()
            for member in tqdm(members, desc="extract", unit="file", disable=not progress):
                tar.extract(member, tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        found = sorted(tmp.rglob("images.txt"), key=lambda p: len(p.parts))
        if not found:
            raise UserError(f"{archive} holds no images.txt: it is not the CUB-200-2011 archive")
        if dataset_root.exists():
            shutil.rmtree(dataset_root)
        os.replace(found[0].parent, dataset_root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_cub(dataset_root, urls=(CUB_URL,), expected_md5=CUB_MD5, archive=None, keep_archive=True,
              progress=True, log=print):
    """Make ``dataset_root`` hold a verified CUB folder: download (or take ``archive``), md5-check, extract.

    Returns what was done: ``'present'``, ``'extracted'``.
    """
    dataset_root = Path(dataset_root)
    marker = dataset_root / VERIFIED
    if marker.is_file() and (dataset_root / "images.txt").is_file():
        try:
            info = json.loads(marker.read_text())
        except ValueError:
            info = {}
        if info.get("md5") and info.get("md5") == (expected_md5 or info.get("md5")):
            ann = load_cub(dataset_root)
            log(f"CUB already present and verified at {dataset_root} ({len(ann.paths)} images, md5 {info['md5']}); "
                "nothing to do")
            return "present"

    if archive:
        archive = Path(archive)
        if not archive.is_file():
            raise UserError(f"archive {archive} does not exist; pass the path of CUB_200_2011.tgz")
        digest = md5sum(archive, progress)
        if expected_md5 and digest != expected_md5:
            raise UserError(f"md5 of {archive} is {digest}, expected {expected_md5}: not the official archive "
                            "(pass --expected-md5 '' to skip the check)")
    else:
        archive = dataset_root.parent / "CUB_200_2011.tgz"
        part = archive.with_name(archive.name + ".part")
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
            raise UserError(f"could not download CUB ({'; '.join(errors) or 'no URL given'}); download "
                            "CUB_200_2011.tgz by hand and pass --archive PATH")
        digest = md5sum(part, progress)
        if expected_md5 and digest != expected_md5:
            part.unlink()
            raise UserError(f"md5 mismatch for the download: got {digest}, expected {expected_md5}; the partial "
                            "file was deleted, run again or pass --archive PATH")
        os.replace(part, archive)

    log(f"Extracting {archive} -> {dataset_root}")
    extract_cub(archive, dataset_root, progress)
    ann = load_cub(dataset_root)
    (dataset_root / VERIFIED).write_text(json.dumps({"md5": digest, "images": len(ann.paths)}) + "\n")
    if not keep_archive and archive.parent == dataset_root.parent and archive.name == "CUB_200_2011.tgz":
        archive.unlink()
    log(f"CUB ready at {dataset_root}: {len(ann.paths)} images, {ann.num_classes} classes, "
        f"{int(ann.is_train.sum())} train / {int((~ann.is_train).sum())} test")
    return "extracted"


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
