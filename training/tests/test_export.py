"""Checkpoint averaging in ``export``: the mean of the weights, exact for copies of one model."""

import pytest
import torch

from training.export import average_weights


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model[1].num_batches_tracked += seed  # an integer buffer: kept from the first, never averaged
    return model


def test_averaging_copies_of_one_model_changes_nothing():
    model = _model(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    average_weights([model, _model(0), _model(0)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_averaging_takes_the_mean_of_each_weight():
    first, second = _model(1), _model(2)
    expected = {k: (v + second.state_dict()[k]) / 2 for k, v in first.state_dict().items() if v.dtype.is_floating_point}
    average_weights([first, second])
    for name, value in expected.items():
        torch.testing.assert_close(first.state_dict()[name], value)
    assert first[1].num_batches_tracked.item() == 1


def test_averaging_refuses_models_of_another_design():
    with pytest.raises(ValueError, match="another design"):
        average_weights([_model(0), torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))])
