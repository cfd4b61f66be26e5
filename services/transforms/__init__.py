"""The transform catalog: what each transformation is, its parameters, its DALI code."""

from .catalog import CATALOGS, Catalog, get_catalog
from .spec import Param, Transform, image_key, sample_params

__all__ = ["CATALOGS", "Catalog", "Param", "Transform", "get_catalog", "image_key", "sample_params"]
