"""Checkpoint conversion between oq2vl_jax parameter trees and foreign formats (one module per format)."""
