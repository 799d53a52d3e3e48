"""Shared test set-up.

* one thread per torch op keeps the suite steady on a 2-core machine;
* the suite runs in one pytest-xdist worker per core (``-n auto --dist loadscope``, pyproject.toml),
  a whole test module at a time per worker, so a module's fixtures are built once;
* ``ray_session``: ONE local Ray session per worker for every test that needs Ray (``ray.init``
  costs seconds), started on first use, shut down when the worker ends; tests that do not need Ray
  never import it. It has 3 logical CPUs whatever the machine: room for two CPU render actors
  beside decoding.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()
