"""Models: the VRT backbone, the spike branch, their fusion and the presets built by ``build_model(cfg)``."""
from ds_deblur.models.presets import PRESETS, build_model
from ds_deblur.models.vrt_spike import VRTWithSpike, rename_legacy_keys

__all__ = ["PRESETS", "VRTWithSpike", "build_model", "rename_legacy_keys"]
