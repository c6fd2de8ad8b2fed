"""ImageNet-Segmentation (gtsegs_ijcv.mat, HDF5) and PascalVOC (VOCdevkit) loaders on tiny files written
in those formats, and ConceptAttention's segmentation protocol on them with a tiny Flux pipeline."""

import numpy as np
import pytest
from PIL import Image

from attnscope.datasets.segbench import IGNORE, VOC_CLASSES, DatasetFormatError, ImageNetSegmentation, PascalVOC

h5py = pytest.importorskip("h5py")
RNG = np.random.default_rng(0)


def write_gtsegs(path, images, masks):
    """The MATLAB v7.3 layout of gtsegs_ijcv.mat: column-major arrays behind object references."""
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")
        img_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        gt_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img_refs[i, 0] = refs.create_dataset(f"img{i}", data=image.transpose(2, 1, 0)).ref
            inner = refs.create_dataset(f"gt{i}", data=mask.transpose(1, 0).astype(np.uint8)).ref
            cell = np.empty((1, 1), dtype=h5py.ref_dtype)
            cell[0, 0] = inner
            gt_refs[i, 0] = refs.create_dataset(f"cell{i}", data=cell).ref
        f.create_dataset("/value/img", data=img_refs)
        f.create_dataset("/value/gt", data=gt_refs)


def write_voc(root, samples):
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("ImageSets/Segmentation", "JPEGImages", "SegmentationClass"):
        (base / sub).mkdir(parents=True)
    palette = [v for c in range(256) for v in (c, 255 - c, (7 * c) % 256)]
    for name, (image, mask) in samples.items():
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask.astype(np.uint8), mode="P")
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(samples) + "\n")
    return root / "VOCdevkit"


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    images = [RNG.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((40, 56), np.uint8) for _ in range(2)]
    masks[0][5:20, 10:40] = 1
    masks[1][20:, :30] = 1
    path = tmp_path_factory.mktemp("imseg") / "gtsegs_ijcv.mat"
    write_gtsegs(path, images, masks)
    return path, images, masks


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    samples = {}
    for name, classes in (("2007_000001", [12]), ("2007_000002", [8, 15]), ("2007_000003", [1])):
        mask = np.zeros((36, 52), np.uint8)
        for k, c in enumerate(classes):
            mask[4 + 10 * k : 14 + 10 * k, 6:30] = c
        mask[3, :] = IGNORE  # a border row
        samples[name] = (RNG.integers(0, 255, (36, 52, 3), dtype=np.uint8), mask)
    return write_voc(tmp_path_factory.mktemp("voc"), samples), samples


def test_imagenet_segmentation_reads_the_mat_layout(imagenet_file, tmp_path):
    path, images, masks = imagenet_file
    data = ImageNetSegmentation(path, labels=["cat", "dog"])
    assert len(data) == 2
    for i in range(2):
        sample = data[i]
        assert np.array_equal(sample.image, images[i]) and np.array_equal(sample.mask, masks[i])
        assert sample.classes == [["cat", "dog"][i]] and sample.indices == [1]
    assert ImageNetSegmentation(path)[0].classes == []
    with pytest.raises(DatasetFormatError, match="3 labels for the 2 images"):
        ImageNetSegmentation(path, labels=["a", "b", "c"])
    (tmp_path / "x.mat").write_text("not hdf5")
    with pytest.raises(DatasetFormatError, match="HDF5"):
        ImageNetSegmentation(tmp_path / "x.mat")


def test_pascal_voc_reads_the_devkit(voc_root):
    root, samples = voc_root
    voc = PascalVOC(root)
    assert len(voc) == 3 and voc[1].classes == ["cat", "person"] and voc[1].indices == [8, 15]
    assert np.array_equal(voc[0].mask, samples["2007_000001"][1]) and voc[0].image.shape == (36, 52, 3)
    single = PascalVOC(root, single_class=True)
    assert [s.name for s in single] == ["2007_000001", "2007_000003"] and single[1].classes == [VOC_CLASSES[1]]
    with pytest.raises(DatasetFormatError, match="VOCdevkit"):
        PascalVOC(root / "nowhere")


def test_concept_segmentation_protocol(voc_root, imagenet_file):
    from attnscope.eval.concept_segmentation import evaluate_concept_segmentation
    from attnscope.testing import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    root, _ = voc_root
    settings = dict(size=(32, 32), background=["background", "grass"], eval_size=24)
    single = evaluate_concept_segmentation(pipe, PascalVOC(root, single_class=True), **settings)
    assert single["images"] == 2 and 0 <= single["pixel_acc"] <= 1 and 0 <= single["mIoU"] <= 1 and 0 <= single["mAP"] <= 1
    multi = evaluate_concept_segmentation(pipe, PascalVOC(root), mode="multi", **settings)
    assert multi["images"] == 3 and 0 <= multi["mIoU"] <= 1 and "mAP" not in multi
    path, _, _ = imagenet_file
    scores = evaluate_concept_segmentation(pipe, ImageNetSegmentation(path, labels=["cat", "dog"]), **settings)
    assert scores["images"] == 2
    with pytest.raises(ValueError, match="mode='single' needs one class"):
        evaluate_concept_segmentation(pipe, PascalVOC(root), **settings)
