"""Host-side data: bytes -> packed numpy batches (oq2vl_jax/batch.py). Never imports models or training code.

    sources.py / webdataset.py   random-access record sources (WebDataset tars, reference packed JSON, TFDS) and the
                                 `python -m oq2vl_jax.data.sources` command
    conversations.py             SFT sources (LLaVA JSON, MAmmoTH-VL) and conversation records -> documents
    json_index.py                byte-offset index of big JSON / JSON-lines files (never loaded whole)
    chat.py                      SFT chat formats (the original's template, stock Qwen2) -> token ids + loss mask
    images.py                    decode, repair, resize exactly as the reference
    tokenizer.py                 Qwen2 tokenizer + the reference's added tokens; document token layout
    packing.py                   buffered first-fit-decreasing packing (checkpointable Grain IterDataset)
    batching.py                  packed rows -> batch arrays and labels
    pipeline.py                  the Grain pipeline from config: build_iterator(...)
    stats.py                     skip / repair counters carried by every batch
    demo_sft.py                  synthetic SFT conversations for configs/demo_sft.py
    demo.py                      synthetic demo data and the tiny offline tokenizer used by tests
"""
