"""Block-wise search spaces: which student structures are legal for a model family.

Importing this package registers the built-in family adapters. To add a family, write one module
with a :class:`Family` subclass decorated by :func:`register_family` and import it here.
"""

# Built-in adapters (registration order is the order `structsearch models` lists them in).
from structsearch.space import cifar_resnet as _cifar_resnet  # noqa: F401
from structsearch.space import convnext as _convnext  # noqa: F401
from structsearch.space import cspnet as _cspnet  # noqa: F401
from structsearch.space import detector as _detector  # noqa: F401
from structsearch.space import edgenext as _edgenext  # noqa: F401
from structsearch.space import efficientformer as _efficientformer  # noqa: F401
from structsearch.space import efficientformer_v2 as _efficientformer_v2  # noqa: F401
from structsearch.space import efficientvit as _efficientvit  # noqa: F401
from structsearch.space import efficientvit_msra as _efficientvit_msra  # noqa: F401
from structsearch.space import eva as _eva  # noqa: F401
from structsearch.space import fastvit as _fastvit  # noqa: F401
from structsearch.space import ghostnet as _ghostnet  # noqa: F401
from structsearch.space import hgnet as _hgnet  # noqa: F401
from structsearch.space import inception_next as _inception_next  # noqa: F401
from structsearch.space import levit as _levit  # noqa: F401
from structsearch.space import mambaout as _mambaout  # noqa: F401
from structsearch.space import metaformer as _metaformer  # noqa: F401
from structsearch.space import mobilenet as _mobilenet  # noqa: F401
from structsearch.space import mobilevit as _mobilevit  # noqa: F401
from structsearch.space import pvt_v2 as _pvt_v2  # noqa: F401
from structsearch.space import regnet as _regnet  # noqa: F401
from structsearch.space import repvit as _repvit  # noqa: F401
from structsearch.space import resnet as _resnet  # noqa: F401
from structsearch.space import resnetv2 as _resnetv2  # noqa: F401
from structsearch.space import rexnet as _rexnet  # noqa: F401
from structsearch.space import starnet as _starnet  # noqa: F401
from structsearch.space import swin as _swin  # noqa: F401
from structsearch.space import tinyvit as _tinyvit  # noqa: F401
from structsearch.space import vit as _vit  # noqa: F401
from structsearch.space.base import BlockChoices, Family, Space
from structsearch.space.registry import family_for, get_family, list_families, register_family, space_of
from structsearch.space.spec import WIDTH_GRID, ArchSpec, BlockSpec

__all__ = [
    "ArchSpec",
    "BlockSpec",
    "BlockChoices",
    "Family",
    "Space",
    "WIDTH_GRID",
    "family_for",
    "get_family",
    "list_families",
    "register_family",
    "space_of",
]
