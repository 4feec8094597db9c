"""Host-side data: bytes -> packed numpy batches (oq2vl_jax/batch.py). Never imports models, training or the demo.
Documents (token layout, chat formats) come from oq2vl_jax/text/.

    sources/                     random-access record sources, one module per kind (WebDataset tars, reference
                                 packed JSON, TFDS, parquet, LLaVA / MAmmoTH-VL conversations) and the
                                 `python -m oq2vl_jax.data.sources` command
    images.py                    decode, repair, resize exactly as the reference
    packing.py                   buffered first-fit-decreasing packing (checkpointable Grain IterDataset)
    batching.py                  packed rows -> batch arrays and labels
    pipeline.py                  the Grain pipeline from config: build_iterator(...)
    stats.py                     skip / repair counters carried by every batch
    build_tokenizer.py           `python -m oq2vl_jax.data.build_tokenizer`: a BPE tokenizer from one's own captions
"""
