import warnings

import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore", category=FutureWarning)
