"""Loading an SD3 folder saved without T5 (the shipped MM-DiT's layout) through attnscope.pipelines."""

import shutil

import pytest

from attnscope.adapters import UnsupportedPipelineError
from attnscope.pipelines import WEIGHTS, absent_components, load_pipeline


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    """A local copy of the shipped MM-DiT folder: SD3 layout, ``text_encoder_3`` and ``tokenizer_3`` saved as absent."""
    folder = tmp_path_factory.mktemp("sd3") / "no-t5"
    shutil.copytree(WEIGHTS / "shapes-mmdit", folder)
    return folder


def test_absent_components_names_the_missing_t5(sd3_folder, tmp_path):
    absent = absent_components(sd3_folder)
    assert absent["text_encoder_3"] is None and absent["tokenizer_3"] is None
    assert "text_encoder" not in absent and "transformer" not in absent
    assert "text_encoder_3" not in absent_components(WEIGHTS / "shapes-unet")  # an SD folder has no T5 slot
    assert absent_components(tmp_path) == {}  # no model_index.json


def test_load_pipeline_passes_the_absent_components(sd3_folder):
    from diffusers import StableDiffusion3Pipeline

    pipe = load_pipeline(str(sd3_folder), device="cpu", dtype="float32", require_adapter=False)
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a red circle", num_inference_steps=1, output_type="np").images.shape == (1, 64, 64, 3)


def test_load_pipeline_refuses_a_pipeline_it_cannot_trace(sd3_folder, monkeypatch):
    import attnscope.adapters as adapters
    from attnscope.adapters.sd3 import SD3Adapter
    from attnscope.adapters.unet import UNetAdapter

    assert isinstance(adapters.adapter_for(load_pipeline(str(sd3_folder), device="cpu", dtype="float32")), SD3Adapter)
    monkeypatch.setattr(adapters, "_builtin", lambda: [UNetAdapter])  # a build without the MM-DiT adapters
    with pytest.raises(UnsupportedPipelineError):  # refused before any work
        load_pipeline(str(sd3_folder), device="cpu", dtype="float32")
