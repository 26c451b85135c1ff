"""Numerical kernels of weight compression: pure functions of a weight and its calibration statistics.

Nothing here runs a model, reads a file or knows a compression kind; codecs and the database
call these. One module per thing computed:

- :mod:`.hessian`: damping, the inverse Cholesky factor that OBS updates use, the
  normalised output error ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)``, and the accumulation of ``Xᵀ X``.
- :mod:`.zeros`: level counts of zeros and the exact-count checks every pruner shares.
- :mod:`.magnitude`, :mod:`.wanda`, :mod:`.sparsegpt`: unstructured pruning.
- :mod:`.grid`: the min–max quantization grid, :class:`~.grid.Quantized` and code packing.
- :mod:`.rtn`, :mod:`.gptq`: weight quantization.

Nothing is imported here, so importing one kernel does not pull the others.
"""
