"""Weights: the registry of released files, downloads, safe checkpoint loading and layout conversion."""
