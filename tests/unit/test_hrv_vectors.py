"""Head relevance vectors: count normalisation, ranking, files, and the published matrices against
the real SD 1.4 and SDXL layouts (built on the meta device, no weights)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import attnscope
from attnscope.control.hooks import model_layers
from attnscope.hrv.published import load_published, published_head_names, read_concept_words
from attnscope.hrv.vectors import HeadRelevance, spearman

PUBLISHED = Path(__file__).resolve().parents[3] / "shared" / "data" / "hrv-published"
needs_published = pytest.mark.skipif(not PUBLISHED.is_dir(), reason="the published HRV data is not here")


def small() -> HeadRelevance:
    heads = [("a.attn2", 0), ("a.attn2", 1), ("b.attn2", 0), ("b.attn2", 1)]
    counts = torch.tensor([[5, 3, 0, 0], [0, 0, 1, 7]])
    return HeadRelevance.from_counts(counts, ["colour", "shape"], heads, words={"colour": ["red"], "shape": ["Circle"]})


def test_count_normalisation_ranking_and_lookup():
    hrv = small()
    assert torch.allclose(hrv.matrix.mean(dim=1), torch.ones(2))
    assert hrv.matrix[0].tolist() == [2.5, 1.5, 0.0, 0.0]
    assert hrv.top_heads("shape", 2) == [3, 2] and hrv.bottom_heads("colour", 2) == [2, 3]
    assert hrv.concept_of("circle") == "shape" and hrv.layout() == (("a.attn2", 2), ("b.attn2", 2))
    unvoted = HeadRelevance.from_counts(torch.zeros(2, 3, dtype=torch.int64), ["x", "y"], [("l", i) for i in range(3)])
    assert unvoted.matrix.tolist() == [[1.0] * 3] * 2  # no votes: no information, a neutral row


def test_clamp_applies_to_the_weights_only():
    hrv = small()
    hrv.clamp = 2.0
    assert hrv.weights("colour").tolist() == [2.0, 1.5, 0.0, 0.0] and hrv.row("colour")[0] == 2.5


def test_bad_concepts_words_and_k_name_the_valid_ones():
    hrv = small()
    with pytest.raises(KeyError, match="this HRV has: colour, shape"):
        hrv.top_heads("texture", 1)
    with pytest.raises(KeyError, match="one of: colour, shape"):
        hrv.concept_of("velvet")
    with pytest.raises(ValueError, match=r"0\.\.4"):
        hrv.top_heads("shape", 5)


def test_saves_and_loads_through_the_registry(tmp_path):
    hrv = small()
    hrv.meta = {"seed": 3}
    again = attnscope.load(hrv.save(tmp_path / "hrv"))
    assert isinstance(again, HeadRelevance) and torch.equal(again.matrix, hrv.matrix)
    assert torch.equal(again.counts, hrv.counts) and again.heads == hrv.heads and again.meta == {"seed": 3}
    assert attnscope.hrv.load(tmp_path / "hrv").words == hrv.words


class _Pipe:
    def __init__(self, unet):
        self.unet = unet


def meta_pipe(config) -> _Pipe:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return _Pipe(UNet2DConditionModel(**config))


@pytest.fixture(scope="module")
def layouts():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "integration" / "test_real_layouts.py"
    spec = importlib.util.spec_from_file_location("real_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"sd": meta_pipe(module.SD15), "sdxl": meta_pipe(module.SDXL)}


@needs_published
@pytest.mark.parametrize("name,model,heads", [("sd_v1_4", "sd", 128), ("sdxl_base_1_0", "sdxl", 1300)])
def test_published_matrices_load_against_real_layouts(layouts, name, model, heads):
    hrv = load_published(PUBLISHED / f"hrv_{name}.npy", layouts[model])
    assert hrv.matrix.shape == (34, heads) and len(hrv.heads) == heads
    assert torch.allclose(hrv.matrix.mean(dim=1), torch.ones(34), atol=1e-4)
    assert hrv.concepts[:2] == ["Animals", "Plants"] and len(hrv.words["Animals"]) == 10
    names = np.load(PUBLISHED / f"head_names_{name}.npy", allow_pickle=False)
    layers = [info for info, _ in model_layers(layouts[model])[1]]
    assert published_head_names(layers) == [str(n) for n in names]
    assert [(l.name, l.heads) for l in layers] == list(hrv.layout())


@needs_published
def test_a_published_matrix_for_another_model_is_refused_with_both_counts(layouts, tmp_path):
    with pytest.raises(ValueError, match="has 1300 heads but the pipeline has 128"):
        load_published(PUBLISHED / "hrv_sdxl_base_1_0.npy", layouts["sd"])
    names = np.load(PUBLISHED / "head_names_sd_v1_4.npy", allow_pickle=False)
    np.save(tmp_path / "hrv_x.npy", np.load(PUBLISHED / "hrv_sd_v1_4.npy", allow_pickle=False))
    np.save(tmp_path / "head_names_x.npy", np.concatenate([names[8:16], names[:8], names[16:]]))
    with pytest.raises(ValueError, match=r"column 0: the file has 'down, layer: 1, head: 0'.*128 heads in both"):
        load_published(tmp_path / "hrv_x.npy", layouts["sd"])


@needs_published
def test_the_published_concept_list_reads_34_concepts_of_10_words():
    concepts = read_concept_words(PUBLISHED / "concept_words_340.csv")
    assert len(concepts) == 34 and {len(w) for w in concepts.values()} == {10}


def test_rank_correlation_is_one_for_a_monotone_copy_and_minus_one_reversed():
    heads = [("a.attn2", h) for h in range(6)]
    counts = torch.tensor([[5, 1, 0, 2, 7, 3], [1, 1, 4, 0, 2, 2]])
    hrv = HeadRelevance.from_counts(counts, ["colour", "shape"], heads)
    squared = HeadRelevance.from_counts(counts ** 2, ["colour", "shape"], heads)  # same order, other values
    reversed_ = HeadRelevance.from_counts(counts.max() - counts, ["colour", "shape"], heads)
    assert squared.rank_correlation(hrv) == {"colour": 1.0, "shape": 1.0}
    assert reversed_.rank_correlation(hrv) == {"colour": -1.0, "shape": -1.0}
    # ties share their mean rank: [1, 1, 2] against [3, 3, 1] is a perfect inversion
    assert spearman(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([3.0, 3.0, 1.0])) == -1.0
    other_model = HeadRelevance.from_counts(counts[:, :4], ["colour", "shape"], heads[:4])
    with pytest.raises(ValueError, match="different heads"):
        hrv.rank_correlation(other_model)


def test_plot_draws_one_row_per_concept_and_one_column_per_head():
    from attnscope.viz.figures import CELL, LABEL_HEIGHT, ROW_LABEL_WIDTH

    heads = [("down.attn2", 0), ("down.attn2", 1), ("up.attn2", 0)]
    hrv = HeadRelevance.from_counts(torch.tensor([[3, 0, 0], [0, 0, 2]]), ["colour", "shape"], heads)
    image = np.asarray(hrv.plot())

    def cell(row, column):
        return tuple(image[2 * LABEL_HEIGHT + row * CELL + CELL // 2, ROW_LABEL_WIDTH + column * CELL + CELL // 2])

    white = (255, 255, 255)
    assert [cell(0, c) == white for c in range(3)] == [False, True, True]  # colour: head 0 only
    assert [cell(1, c) == white for c in range(3)] == [True, True, False]  # shape: the last head only
    assert cell(0, 0) == cell(1, 2)  # both rows' maxima (3.0) get the darkest colour


def test_plot_of_a_published_size_matrix_stays_readable():
    """SDXL's HRV has 1,300 heads in 70 layers: the cells shrink so the figure stays under 3,000 px wide."""
    heads = [(f"layer{l}.attn2", h) for l in range(70) for h in range(20)][:1300]
    hrv = HeadRelevance.from_counts(torch.randint(0, 5, (34, 1300)), [f"c{i}" for i in range(34)], heads)
    image = hrv.plot()
    assert image.size[0] < 3000 and image.size[1] > 34 * 10
