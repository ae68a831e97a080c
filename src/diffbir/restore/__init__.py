"""Restoration: the restorers (DiffBIR, whole-photo faces), their run plan, stages, prompts and models."""
