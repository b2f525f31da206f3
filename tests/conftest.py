"""Fixtures shared by the unit tests (the smoke profile itself is set by the root conftest)."""
import pytest

from helpers.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def pets(tmp_path_factory):
    """A small dataset in the official layout (written by the synthetic generator). Read-only:
    a test that needs to break or edit files copies it first."""
    root = tmp_path_factory.mktemp("pets")
    write_synthetic_dataset(root, n_trainval=14, n_test=4, seed=0, progress=False)
    return root
