"""Baseline optimizers (installed as ``levelsearch.baselines``)."""
