"""Compression kinds as codecs (installed as ``levelsearch.adapters.codecs``).

A codec is what a compression kind is made of; everything else in ``adapters/`` (model, data,
teacher, scoring, search, held-out report, plots) is shared. :mod:`.base` holds the contract
(:class:`~.base.Codec` and :class:`~.base.WeightCodec`) and the registry, filled from the
entry-point group ``levelsearch.codecs``; the built-in codecs are ``drop`` (:mod:`.drop`),
``sparsity`` (:mod:`.sparsity`), ``quant`` (:mod:`.quant`) and ``joint`` (:mod:`.joint`).
Nothing heavy is imported here.
"""

from .base import *  # noqa: F403  (the public names of the contract and the registry)
from .base import __all__  # noqa: F401
