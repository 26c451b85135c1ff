"""``drop``: remove whole attention or MLP sub-blocks (the codec, its problem ``llm-drop``, its baselines)."""
