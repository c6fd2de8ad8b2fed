"""Ordered weakening's parts: the k grid, the concept scorers (the ShapesWorld detector; CLIP, here a tiny
random one since no weights may be downloaded), the result's table and plot."""

import numpy as np
import pytest

from attnscope.datasets.shapes import make_scenes
from attnscope.hrv.weakening import CLIPScorer, ShapesScorer, WeakeningResult, weakening_ks


def test_the_k_grid_follows_the_paper():
    assert weakening_ks(128)[:4] == [0, 1, 11, 21] and weakening_ks(128)[-2:] == [121, 128]
    assert weakening_ks(1) == [0, 1]


def test_the_shapes_scorer_finds_what_survives():
    scenes = make_scenes(0, 2, split="test")
    blank = np.full_like(scenes[0].image, 128)
    for concept in ("colour", "shape"):
        scorer = ShapesScorer(concept)
        assert scorer([s.image for s in scenes], scenes) == [1.0, 1.0]
        assert scorer([blank], scenes[:1]) == [0.0]
    with pytest.raises(ValueError, match="scores"):
        ShapesScorer("size")


def test_the_clip_scorer_gives_one_similarity_per_image():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from attnscope.testing import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    scores = CLIPScorer(model=model, processor=processor)([np.zeros((64, 64, 3), np.uint8)] * 2, ["red", "cat"])
    assert len(scores) == 2 and all(-1.0 <= s <= 1.0 for s in scores)


def test_the_result_reads_as_a_table_and_a_plot():
    result = WeakeningResult("colour", [0, 1, 11], {"MoRHF": [[1.0, 1.0], [0.5, 0.5], [0.0, 0.5]],
                                                    "LeRHF": [[1.0, 1.0], [1.0, 1.0], [1.0, 0.5]]})
    assert result.table().splitlines()[-1] == "| 11 | 0.250 | 0.750 |"
    assert result.plot().size == (480, 320) and result.to_dict()["mean"]["MoRHF"] == [1.0, 0.5, 0.25]
