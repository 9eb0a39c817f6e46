"""Inference: ``ds-deblur infer`` (``cli``), the pipeline it is built from (``pipeline``: a model from any
checkpoint, sequences from disk, whole sequences restored in overlapping temporal windows) and spatial tiling
(``tiling``), which validation shares."""
