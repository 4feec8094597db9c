"""Everything about text, shared by data, training, inference, evaluation, curation and conversion. Imports nothing
of ours but errors.

    tokens.py           special tokens, loading and checking a Qwen2 tokenizer, preparing a checkpoint's tokenizer
    documents.py        the token layout of a document (captions, interleaved, any pieces) and `<image>` escaping
    chat.py             chat formats: SFT training documents and generation prompts from one renderer
    bpe.py              training a byte-level BPE tokenizer offline (from one's captions; the demo's tiny one)
    tokenizer_files.py  editing tokenizer files on disk (the `<image>` token of HF LLaVA exports)
"""
