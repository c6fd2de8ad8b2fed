"""Datasets: the procedural ShapesWorld generator, its detector and COCO-style I/O."""

from .shapes import (COLORS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject, make_scene, make_scenes,
                     scene_stream, vocabulary)

__all__ = ["COLORS", "RELATIONS", "SHAPES", "SIZES", "Scene", "ShapeObject", "make_scene",
           "make_scenes", "scene_stream", "vocabulary"]
