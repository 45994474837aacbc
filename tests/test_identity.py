"""vitlrp.identity: every run records which checkpoint and which dataset it read (content hashes), and a run whose
checkpoint changed since, or differs from the others', is told apart."""
import hashlib
import json
import shutil

from vitlrp import identity


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    assert identity.file_sha256(path) == hashlib.sha256(b"weights").hexdigest()
    assert identity.file_sha256(path) == hashlib.sha256(b"weights").hexdigest()
    assert opened == [str(path)]  # the second call is the memo
    path.write_bytes(b"retrained weights")
    assert identity.file_sha256(path) == hashlib.sha256(b"retrained weights").hexdigest()
    assert identity.file_sha256(tmp_path / "gone.pt") is None


def test_the_dataset_hash_follows_its_annotation_files(cub_fixture):
    root = cub_fixture()
    before = identity.dataset_sha256(root)
    assert identity.dataset_sha256(root) == before
    labels = root / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("1 1\n", "1 2\n", 1))  # one label changed
    assert identity.dataset_sha256(root) != before


def runs_from(tmp_path, shas, datasets=None):
    """Identities of runs that read one checkpoint file each (name → bytes), on ``datasets`` (name → hash)."""
    out = {}
    for name, data in shas.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        out[name] = identity.identify([path])
        out[name]["dataset"] = {"root": "x", "sha256": (datasets or {}).get(name, "d")}
    return out


def test_a_checkpoint_changed_since_the_run_makes_it_stale(tmp_path):
    runs = runs_from(tmp_path, {"lrp_eval": b"model"})
    assert identity.stale(runs) == {}
    (tmp_path / "lrp_eval.pt").write_bytes(b"retrained")
    (reason,) = identity.stale(runs)["lrp_eval"]
    assert reason.startswith(f"lrp_eval: its checkpoint {(tmp_path / 'lrp_eval.pt').resolve()} has changed since it "
                             "ran (sha256 ")
    (tmp_path / "lrp_eval.pt").unlink()
    assert identity.stale(runs)["lrp_eval"] == [f"lrp_eval: its checkpoint {(tmp_path / 'lrp_eval.pt').resolve()} "
                                                "is no longer there"]


def test_a_run_from_another_checkpoint_than_the_training_run_wrote_is_stale(tmp_path):
    model = tmp_path / "best.pt"
    model.write_bytes(b"the model")
    other = tmp_path / "other.pt"
    other.write_bytes(b"another model")
    runs = {"train": identity.identify([model]), "lrp_eval": identity.identify([model]),
            "sanity": identity.identify([other]), "sweep": None}  # sweep: made before runs recorded this
    assert identity.stale(runs, reference="train") == {"sanity": ["sanity: made from another checkpoint than train/ "
                                                                  "wrote"]}


def test_without_a_training_run_the_odd_one_out_is_stale_and_a_tie_flags_all(tmp_path):
    runs = runs_from(tmp_path, {"a": b"m1", "b": b"m1", "c": b"m2"})
    assert identity.stale(runs) == {"c": ["c: made from another checkpoint than the other runs"]}
    tie = identity.stale(runs_from(tmp_path, {"a": b"m1", "b": b"m2"}))
    assert set(tie) == {"a", "b"} and "made from different checkpoints" in tie["a"][0]


def test_a_run_on_another_dataset_is_stale(tmp_path):
    runs = runs_from(tmp_path, {"a": b"m", "b": b"m", "c": b"m"}, datasets={"c": "edited"})
    assert identity.stale(runs) == {"c": ["c: made from another dataset than the other runs"]}


def test_every_run_records_its_checkpoint_and_dataset(trained_tiny, tmp_path):
    """The training run records the checkpoints it wrote; a run that reads one records its hash and the
    dataset's (the gallery's and the report's fixtures check the scripts that write config.json the same way)."""
    from conftest import run_script_inprocess

    train = json.loads((trained_tiny["output_dir"] / "config.json").read_text())["identity"]
    best, last = trained_tiny["checkpoint"].resolve(), trained_tiny["last"].resolve()
    assert train["checkpoints"] == {str(best): identity.file_sha256(best), str(last): identity.file_sha256(last)}
    assert train["dataset"] == {"root": str(trained_tiny["dataset_root"].resolve()),
                                "sha256": identity.dataset_sha256(trained_tiny["dataset_root"])}
    code, _, err = run_script_inprocess("evaluate_lrp", "--checkpoint-path", trained_tiny["checkpoint"],
                                        "--dataset-root", trained_tiny["dataset_root"], "--num-images", "2",
                                        "--methods", "random", "--reference", "", "--perturb-steps", "2",
                                        "--num-workers", "0", "--device", "cpu", "--output-dir", tmp_path / "eval")
    assert code == 0, err[-2000:]
    run = identity.read(tmp_path / "eval")
    assert run == {"checkpoints": {str(best): identity.file_sha256(best)}, "dataset": train["dataset"]}
    shutil.copytree(trained_tiny["output_dir"], tmp_path / "train")
    assert identity.stale({"train": identity.read(tmp_path / "train"), "eval": run}, reference="train") == {}
