"""Download CUB-200-2011, check its md5, and unpack it so that DATASET_ROOT holds images.txt."""
# --- configuration (each constant is also a flag: --dataset-root PATH, ...) ---
DATASET_ROOT = "dataset/raw/CUB_200_2011"  # folder that will hold images.txt (same meaning in every script)
URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"  # Caltech data record
FALLBACK_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/CUB_200_2011.tgz"  # tried if URL fails
EXPECTED_MD5 = "97eceeb196236b17998738112f37df78"  # md5 of the official archive; '' skips the check
ARCHIVE = ""  # a local CUB_200_2011.tgz to use instead of downloading
KEEP_ARCHIVE = True  # keep the downloaded .tgz beside DATASET_ROOT
VERIFY = False  # decode every image and list the unreadable ones
# ------------------------------------------------------------------------------
from vitlrp import cli
from vitlrp.cub import load_cub
from vitlrp.download import fetch_cub, find_unreadable


def main(cfg):
    fetch_cub(cfg.DATASET_ROOT, urls=(cfg.URL, cfg.FALLBACK_URL), expected_md5=cfg.EXPECTED_MD5,
              archive=cfg.ARCHIVE or None, keep_archive=cfg.KEEP_ARCHIVE)
    if cfg.VERIFY:
        ann = load_cub(cfg.DATASET_ROOT)
        bad = find_unreadable(ann)
        for _, message in bad:
            print(f"  unreadable: {message}")
        print(f"Verified {len(ann.paths)} images: {len(bad)} unreadable")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
