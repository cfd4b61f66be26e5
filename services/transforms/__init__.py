"""The transform catalog: what each transformation is, its parameters, its DALI code."""

from .catalog import CATALOGS, Catalog, get_catalog
from .groups import GROUPS
from .spec import Param, Transform, image_key, parse_version, sample_params

__all__ = ["CATALOGS", "Catalog", "GROUPS", "Param", "Transform", "get_catalog", "image_key", "parse_version",
           "sample_params"]
