"""Scoring rules shared by tasks; each names the upstream rule it follows.

    choice.py      letter / option extraction from generated text
    vqa_norm.py    EvalAI VQA answer normalisation and soft accuracy
    mmmu_parse.py  MMMU / MathVista answer parsing
"""
