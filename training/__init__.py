"""Training code of the two tiny ShapesWorld models shipped with attnscope (not part of the installed package).

Run from the repository root, e.g. ``python -m training.reproduce shapes-unet --out runs/shapes-unet``.
"""
