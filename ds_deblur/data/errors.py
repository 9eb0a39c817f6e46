"""The one exception of the data pipeline (part of ds_deblur's error family)."""
from ds_deblur.errors import DatasetError

__all__ = ["DatasetError"]
