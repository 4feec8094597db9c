"""Pure Flax NNX models. Knows nothing of files, data loading, optimizers or checkpoints."""
