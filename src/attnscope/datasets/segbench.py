"""Real-image segmentation benchmarks in their published formats: ImageNet-Segmentation and PascalVOC 2012.

- :class:`ImageNetSegmentation` reads ``gtsegs_ijcv.mat`` (Guillaumin et al., IJCV 2014; 4,276 images
  with one foreground object each), a MATLAB v7.3 file, i.e. HDF5: ``/value/img`` holds one
  reference per image to a ``(3, W, H)`` uint8 array (MATLAB stores column-major), ``/value/gt`` one
  reference per image to a 1×1 cell whose reference points at the ``(W, H)`` binary mask. The file
  names no class; pass ``labels`` (one class name per image) for methods that need a word.
- :class:`PascalVOC` reads a ``VOCdevkit/VOC2012`` folder: ``ImageSets/Segmentation/<split>.txt``,
  ``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png`` (palette PNG of class indices 0–20,
  255 on object borders = ignored).

Both yield :class:`SegSample` (image, class-index mask, present class names). ``h5py`` is imported
only when an ImageNet-Segmentation file is opened (``pip install h5py``).

Example:
    >>> voc = PascalVOC("data/VOCdevkit", split="val", single_class=True)    # doctest: +SKIP
    >>> sample = voc[0]; sample.classes, sample.mask.shape                    # doctest: +SKIP
    (['dog'], (375, 500))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

#: PascalVOC 2012's classes by index (0 = background; 255 in masks = ignored border).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
#: The label of ignored pixels in PascalVOC masks.
IGNORE = 255


class DatasetFormatError(ValueError):
    """A benchmark file or folder that is not in the expected format; the message says what is wrong."""


@dataclass
class SegSample:
    """One benchmark image.

    Attributes:
        image: ``(H, W, 3)`` uint8.
        mask: ``(H, W)`` uint8 class indices (0 = background, :data:`IGNORE` = not scored); for
            ImageNet-Segmentation 1 = the object.
        classes: names of the classes present besides background (in index order); ``[]`` when unknown.
        indices: their class indices in ``mask``.
        name: the image's id in its data set.
    """

    image: np.ndarray
    mask: np.ndarray
    classes: list[str]
    indices: list[int]
    name: str


class ImageNetSegmentation(Sequence):
    """``gtsegs_ijcv.mat`` (see the module docstring); ``labels``: a class name per image, or a text file
    with one per line."""

    def __init__(self, path: str | Path, labels: Sequence[str] | str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetFormatError(f"{self.path} does not exist; give the path of gtsegs_ijcv.mat.")
        self._file = None
        with self._open() as f:
            self._length = int(f["/value/img"].shape[0])
            if f["/value/gt"].shape[0] != self._length:
                raise DatasetFormatError(f"{self.path} holds {self._length} images but {f['/value/gt'].shape[0]} masks.")
        if isinstance(labels, (str, Path)):
            labels = [line.strip() for line in Path(labels).read_text().splitlines() if line.strip()]
        self.labels = list(labels) if labels is not None else None
        if self.labels is not None and len(self.labels) != self._length:
            raise DatasetFormatError(f"{len(self.labels)} labels for the {self._length} images of {self.path}.")

    def _open(self):
        try:
            import h5py
        except ImportError:
            raise ImportError("Reading gtsegs_ijcv.mat needs h5py: pip install h5py") from None
        try:
            return h5py.File(self.path, "r")
        except OSError:
            raise DatasetFormatError(f"{self.path} is not a MATLAB v7.3 (HDF5) file like gtsegs_ijcv.mat.") from None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> SegSample:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} is out of range for {self._length} images.")
        index %= self._length
        if self._file is None:
            self._file = self._open()
        f = self._file
        image = np.asarray(f[f["/value/img"][index, 0]]).transpose(2, 1, 0)  # (3, W, H) -> (H, W, 3)
        cell = f[f["/value/gt"][index, 0]]
        mask = np.asarray(f[cell[0, 0]]).transpose(1, 0)  # (W, H) -> (H, W)
        if image.ndim != 3 or image.shape[2] != 3 or mask.shape != image.shape[:2]:
            raise DatasetFormatError(f"Image {index} of {self.path} has shape {image.shape} and mask {mask.shape}.")
        label = [self.labels[index]] if self.labels is not None else []
        return SegSample(image.astype(np.uint8), (mask > 0).astype(np.uint8), label, [1] if label else [], str(index))


class PascalVOC(Sequence):
    """A ``VOCdevkit`` folder's segmentation split (see the module docstring).

    ``single_class=True`` keeps the images with exactly one class besides background (the
    ConceptAttention paper's single-class subset).
    """

    def __init__(self, root: str | Path, split: str = "val", year: str = "2012", single_class: bool = False):
        root = Path(root)
        self.root = root / f"VOC{year}" if (root / f"VOC{year}").is_dir() else root
        listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DatasetFormatError(f"{listing} does not exist; give a VOCdevkit folder (holding VOC{year}) "
                                     "with ImageSets/Segmentation, JPEGImages and SegmentationClass.")
        self.ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        if single_class:
            self.ids = [i for i in self.ids if len(self._present(self._mask(i))) == 1]

    def _mask(self, name: str) -> np.ndarray:
        from PIL import Image

        path = self.root / "SegmentationClass" / f"{name}.png"
        if not path.is_file():
            raise DatasetFormatError(f"{path} is missing.")
        image = Image.open(path)
        if image.mode not in ("P", "L"):
            raise DatasetFormatError(f"{path} is not a palette PNG of class indices (mode {image.mode}).")
        return np.asarray(image, dtype=np.uint8)

    @staticmethod
    def _present(mask: np.ndarray) -> list[int]:
        return [int(c) for c in np.unique(mask) if 0 < c < len(VOC_CLASSES)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> SegSample:
        from PIL import Image

        name = self.ids[index]
        mask = self._mask(name)
        image = np.asarray(Image.open(self.root / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        if image.shape[:2] != mask.shape:
            raise DatasetFormatError(f"Image {name} is {image.shape[:2]} but its mask {mask.shape}.")
        present = self._present(mask)
        return SegSample(image, mask, [VOC_CLASSES[c] for c in present], present, name)
