"""Flax NNX modules and model log-densities (no training loops). Imports ``estimators`` only."""
