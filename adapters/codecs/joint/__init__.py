"""``joint``: sparsity and bit width chosen together per layer (the codec and its problem ``llm-joint``)."""
