"""The synthetic world of the CPU demo, also the tests' fixtures. Nothing outside demo/ (and the entry points that run
the demo) depends on it; `data` never imports it.

    shapes.py      coloured shapes with captions (WebDataset shards), LLaVA SFT records, the tiny offline tokenizer
    sft.py         synthetic SFT conversations for configs/demo_sft.py
    setup.py       writes the demo data into the workdir once (one marker file) and points the config at it
    attributes.py  the pre-training demo's score: do generated captions name the held-out attributes
    answers.py     the SFT demo's score: generated answers to held-out questions
"""
