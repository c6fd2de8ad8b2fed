"""Half precision traces every family unchanged, and stored state does not grow with steps."""

import warnings

import pytest
import torch

import attnscope
from attnscope.testing import tiny_flux_pipeline, tiny_sd3_pipeline, tiny_sd_pipeline

FAMILIES = {"sd": (tiny_sd_pipeline, {}), "sd3": (tiny_sd3_pipeline, {"concepts": ["cat", "background"]}),
            "flux": (tiny_flux_pipeline, {"concepts": ["cat", "background"]})}


def _half(make, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make().to(dtype=dtype)


def _run(pipe, steps=2):
    return pipe("a red cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_half_precision_traces_unchanged_images_and_float32_maps(family, dtype):
    make, options = FAMILIES[family]
    pipe = _half(make, dtype)
    plain = _run(pipe)
    with attnscope.trace(pipe, **options) as tc:
        traced = _run(pipe)
    assert (plain == traced).all()
    assert all(t.dtype == torch.float32 for t in tc.generation().sums.values())
    soft = tc.daam().word("cat")
    assert soft.isfinite().all() and soft.max() == 1
    if options:
        concept = tc.concept_attention().concept("cat")
        assert concept.isfinite().all() and 0 <= concept.min() and concept.max() <= 1


def _state_bytes(value) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_state_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_state_bytes(v) for v in value)
    return _state_bytes(vars(value)) if hasattr(value, "__dict__") else 0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_stored_state_does_not_grow_with_steps(family):
    make, options = FAMILIES[family]
    pipe = make()
    sizes = []
    for steps in (2, 5):
        with attnscope.trace(pipe, **options) as tc:
            _run(pipe, steps)
        gen = tc.generation()
        assert len(gen.steps_read) == steps
        sizes.append(_state_bytes(gen.sums) + _state_bytes(gen.extras))
    assert sizes[0] == sizes[1] > 0
