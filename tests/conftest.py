import pytest

from helpers import SMALL, compose_cfg


@pytest.fixture
def run_inprocess(tmp_path):
    """Compose with overrides and train into a fresh directory; returns (summary, run_dir)."""
    from gradflow_exp.run.job import run

    counter = iter(range(1000))

    def _run(*overrides):
        cfg = compose_cfg(SMALL + list(overrides))
        run_dir = tmp_path / f"run{next(counter)}"
        return run(cfg, run_dir), run_dir

    return _run


def pytest_collection_modifyitems(config, items):
    """The Slurm tests first: they mostly wait on the scheduler, so under ``-n 3 --dist
    loadfile`` (scripts/test.sh) one worker waits on them while the others run the rest."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_slurm.py") else 1)
