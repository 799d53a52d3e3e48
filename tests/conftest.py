"""Shared test set-up: one thread per torch op keeps the suite steady on a 2-core machine."""

import torch

torch.set_num_threads(1)
