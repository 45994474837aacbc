"""Get CUB-200-2011 into DATASET_ROOT (the folder that holds images.txt), or check the one you already have.

A missing or empty DATASET_ROOT is filled: download (or ARCHIVE), md5 check, safe extraction. An existing CUB
folder is never downloaded over or deleted: it is checked (annotations), and with VERIFY every image is decoded.
"""
# --- configuration (each constant is also a flag: --dataset-root PATH, ...) ---
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder that holds (or will hold) images.txt (same in every script)
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"  # Caltech data record
FALLBACK_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/CUB_200_2011.tgz"  # tried if URL fails
EXPECTED_MD5 = "97eceeb196236b17998738112f37df78"  # md5 of the official archive; '' skips the check
ARCHIVE = ""  # a local CUB_200_2011.tgz to use instead of downloading
KEEP_ARCHIVE = True  # keep the downloaded .tgz beside DATASET_ROOT
VERIFY = False  # decode every image, print counts per split (an existing folder is only checked, never replaced)
# ------------------------------------------------------------------------------
from vitlrp import cli
from vitlrp.download import fetch_cub, verify_cub


def main(cfg):
    status = fetch_cub(cfg.DATASET_ROOT, urls=(cfg.URL, cfg.FALLBACK_URL), expected_md5=cfg.EXPECTED_MD5,
                       archive=cfg.ARCHIVE or None, keep_archive=cfg.KEEP_ARCHIVE)
    if cfg.VERIFY:
        return 1 if verify_cub(cfg.DATASET_ROOT) else 0
    if status == "found":
        print("Pass --verify true to decode every image as well.")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
