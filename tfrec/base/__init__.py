"""Shared base: errors, tensor codecs, metrics, settings, CPU affinity."""
