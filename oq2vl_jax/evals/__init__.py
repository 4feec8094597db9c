"""Evaluation: benchmarks and the demo task, scored on a trained model."""
