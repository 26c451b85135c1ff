"""``sparsity``: unstructured pruning per linear layer (the codec, its problem ``llm-sparsity``, OWL)."""
