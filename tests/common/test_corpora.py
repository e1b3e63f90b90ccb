"""The shared Reuters-21578 reader and the shipped-model locators."""

import io
import tarfile

import pytest

from common.corpora import read_reuters
from common.data import DataFormatError
from common.pretrained import minilm_path, smollm2_gguf_path


def test_reuters_aptemod_counts():
    docs = read_reuters()
    train = [d for d in docs if d.split == "train"]
    test = [d for d in docs if d.split == "test"]
    assert (len(train), len(test)) == (7769, 3019)
    assert len({c for d in docs for c in d.categories}) == 90
    assert docs[0].fileid.startswith("test/") or docs[0].fileid.startswith("training/")


def _tar(tmp_path, files: dict[str, bytes]):
    path = tmp_path / "r.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reuters_tiny_archive_and_folder(tmp_path):
    files = {"reuters/cats.txt": b"training/1 earn\ntest/2 acq grain\n",
             "reuters/training/1": b"PROFIT UP\nText.", "reuters/test/2": b"BUY\nMore \xe9 text."}
    docs = read_reuters(_tar(tmp_path, files))
    assert [(d.fileid, d.split, d.categories) for d in docs] == [
        ("training/1", "train", ("earn",)), ("test/2", "test", ("acq", "grain"))]
    assert "More é text." in docs[1].text  # Latin-1 fallback
    folder = tmp_path / "unpacked"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    assert read_reuters(folder) == docs


@pytest.mark.parametrize("cats,problem", [
    (b"training/1\n", "has no category"),
    (b"dev/1 earn\n", "expected 'training/<id>'"),
    (b"training/1 earn\ntraining/1 earn\n", "listed twice"),
    (b"training/9 earn\n", "missing from the corpus"),
])
def test_reuters_bad_cats_lines(tmp_path, cats, problem):
    path = _tar(tmp_path, {"reuters/cats.txt": cats, "reuters/training/1": b"x"})
    with pytest.raises(DataFormatError, match=problem) as err:
        read_reuters(path)
    assert "cats.txt:" in str(err.value)


def test_reuters_not_an_archive(tmp_path):
    bad = tmp_path / "reuters.tar.gz"
    bad.write_bytes(b"not a tar")
    with pytest.raises(DataFormatError, match="not a readable tar archive"):
        read_reuters(bad)


def test_shipped_models_are_found():
    assert (minilm_path() / "config.json").exists()
    assert smollm2_gguf_path().stat().st_size > 50_000_000
