"""Benchmarks run on the target machine: `python -m oq2vl_jax.bench step|decode` (bench/__main__.py).

    step.py     the train step of a config's model on synthetic pre-training rows: step time, tokens/s, MFU
    decode.py   generation (prefill + decode loop) against transformers on one model
    shapes.py   the synthetic rows shaped like the paper's packed pre-training data (also used by the torch peer)

The repository's benchmarks/ folder holds the CPU side-by-side scripts and their recorded results.
"""
