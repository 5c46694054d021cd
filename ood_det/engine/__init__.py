"""Shared training / evaluation engine (both backends): config loading, checkpoints, launch."""
