"""``quant``: per-layer bit widths, GPTQ or RTN (the codec and its problem ``llm-quant``)."""
