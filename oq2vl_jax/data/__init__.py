"""Host-side data: bytes -> packed numpy batches (oq2vl_jax/batch.py). Never imports models or training code.

    sources.py / webdataset.py   random-access record sources (WebDataset tars, reference packed JSON, TFDS, LLaVA,
                                 MAmmoTH-VL) and the `python -m oq2vl_jax.data.sources` command
    images.py                    decode, repair, resize exactly as the reference
    tokenizer.py                 Qwen2 tokenizer + the reference's added tokens; document token layout
    packing.py                   buffered first-fit-decreasing packing (checkpointable Grain IterDataset)
    batching.py                  packed rows -> batch arrays and labels
    pipeline.py                  the Grain pipeline from config: build_iterator(...)
    stats.py                     skip / repair counters carried by every batch
    demo.py                      synthetic demo data and the tiny offline tokenizer used by tests
"""
