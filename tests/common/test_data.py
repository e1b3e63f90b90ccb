"""Data-root resolution order, the missing-dataset error, checksums and DataFormatError."""

from pathlib import Path

import pytest

from common import data
from common.data import (
    DATA_DIR_ENV,
    ChecksumError,
    DataFormatError,
    DatasetNotFoundError,
    dataset_path,
    resolve_data_dir,
    sha256_file,
    verify_checksum,
)


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A fake repo whose parent holds shared/data; cwd inside the repo; no env var."""
    repo = tmp_path / "repo"
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    repo.mkdir()
    monkeypatch.setattr(data, "_REPO_ROOT", repo)
    monkeypatch.chdir(repo)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    return repo, shared


def test_order_override_env_local_shared(roots, tmp_path, monkeypatch):
    repo, shared = roots
    assert resolve_data_dir() == shared  # only ../shared/data exists
    (repo / "data").mkdir()
    assert resolve_data_dir() == repo / "data"  # ./data wins over ../shared/data
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"  # the env var wins, even before it exists
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"  # an override wins over all


def test_missing_dataset_error_names_dataset_path_and_source(roots):
    _, shared = roots
    with pytest.raises(DatasetNotFoundError) as err:
        dataset_path("ATIS", "nlu/atis/train/seq.in", source="https://github.com/monologg/JointBERT")
    msg = str(err.value)
    assert "'ATIS'" in msg and str(shared / "nlu/atis/train/seq.in") in msg
    assert "https://github.com/monologg/JointBERT" in msg and DATA_DIR_ENV in msg


def test_no_root_at_all(roots):
    _, shared = roots
    shared.rmdir()
    with pytest.raises(DatasetNotFoundError, match="no data root found"):
        dataset_path("X", "x.txt", source="somewhere")


def test_found_file_and_checksum(roots):
    _, shared = roots
    f = shared / "a.txt"
    f.write_text("hello\n")
    digest = sha256_file(f)
    assert dataset_path("A", "a.txt", source="s", sha256=digest) == f
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        verify_checksum(f, "0" * 64)


def test_real_shared_data_is_found():
    # The repository's own ../shared/data (present on the project machines and in CI).
    assert (resolve_data_dir() / "SOURCES.md").exists()


def test_data_format_error_names_file_and_line():
    e = DataFormatError(Path("x/seq.out"), "3 words but 4 tags", line=7)
    assert str(e) == "x/seq.out:7: 3 words but 4 tags" and isinstance(e, ValueError)
