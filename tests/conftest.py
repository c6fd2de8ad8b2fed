import warnings

import pytest
import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def sd_pipe():
    from attnscope.testing import tiny_sd_pipeline

    return tiny_sd_pipeline()


@pytest.fixture(scope="session")
def sdxl_pipe():
    from attnscope.testing import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
