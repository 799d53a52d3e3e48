"""Shared test set-up.

* one thread per torch op keeps the suite steady on a 2-core machine;
* ``ray_session``: ONE local Ray session for every test that needs Ray (``ray.init`` costs
  seconds), started on first use, shut down at the end; the rest of the suite never imports Ray.
  It has 3 logical CPUs whatever the machine: room for two CPU render actors beside decoding.
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
