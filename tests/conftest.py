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
