"""Training: state, optimizer, jitted step, checkpoints, metrics, FLOPs and the loop (see docs/training.md)."""
