"""Tiny benchmark copies in their published layouts (docs/evaluation.md), with scripted model outputs and the
strict / reference scores those outputs earn, worked out by hand next to each record.

Each writer returns (outputs, expected): outputs[item_id] = {request name: text or probabilities};
expected = {"strict": %, "reference": %, plus task-specific numbers}.
"""

from __future__ import annotations

import base64
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(colour=(200, 30, 30), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _write(path: str, data: bytes | str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def write_mmbench(root: str, tsv: bool = False):
    img = {"bytes": png(), "path": None}
    rows = [
        dict(index=0, question="What colour is it?", hint=None, A="red", B="blue", C="green", D=None, answer="A",
             category="colour", image=img),
        dict(index=1000000, question="What colour is it?", hint=None, A="blue", B="green", C="red", D=None,
             answer="C", category="colour", image=img),
        dict(index=1, question="Which animal?", hint="Look closely.", A="cat", B="dog", C=None, D=None, answer="B",
             category="animal", image=img),
        dict(index=2, question="Is it day?", hint=None, A="yes", B="no", C=None, D=None, answer="A",
             category="animal", image=img),
    ]
    if tsv:
        header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
        lines = ["\t".join(header)]
        for r in rows:
            vals = [("" if r[k] is None else str(r[k])) for k in header[:-1]]
            lines.append("\t".join(vals + [base64.b64encode(r["image"]["bytes"]).decode()]))
        _write(os.path.join(root, "mmbench", "MMBench_DEV_EN.tsv"), "\n".join(lines) + "\n")
    else:
        _parquet(os.path.join(root, "mmbench", "dev.parquet"), rows)
    outputs = {
        "0": {"answer": "A"},                      # strict A right; reference "a" in "a" right
        "1000000": {"answer": "The answer is C"},  # strict C right; reference right
        "1": {"answer": "(B)"},                    # strict B right; reference right
        "2": {"answer": "No answer"},              # strict: option text "no" -> B, wrong; reference: "a" in "no answer"
    }
    # per row strict 3/4; circular groups {0: right, right}, {1: right}, {2: wrong} -> 2/3; reference 4/4
    return outputs, {"strict": 200 / 3, "per_row": 75.0, "reference": 100.0}


def write_seedbench(root: str):
    d = os.path.join(root, "seedbench")
    qs = [
        dict(question_id="q1", question="What is shown?", choice_a="a cat", choice_b="a dog", choice_c="a car",
             choice_d="a cup", answer="B", data_id="1.jpg", data_type="image", question_type_id=1),
        dict(question_id="q2", question="Which shape?", choice_a="red circle", choice_b="blue square",
             choice_c="green star", choice_d="black line", answer="C", data_id="2.jpg", data_type="image",
             question_type_id=2),
        dict(question_id="q3", question="Count?", choice_a="1", choice_b="2", choice_c="3", choice_d="4", answer="D",
             data_id="1.jpg", data_type="image", question_type_id=2),
        dict(question_id="v1", question="Video?", choice_a="x", choice_b="y", choice_c="z", choice_d="w", answer="A",
             data_id="clip.mp4", data_type="video", question_type_id=3),
    ]
    _write(os.path.join(d, "test.json"), json.dumps(
        {"questions": qs, "question_type": {"Scene Understanding": 1, "Instance Attributes": 2, "Action": 3}}))
    _write(os.path.join(d, "images", "1.jpg"), png())
    _write(os.path.join(d, "images", "2.jpg"), png((0, 0, 200)))
    outputs = {"q1": {"answer": "B."},            # strict B right; reference right
               "q2": {"answer": "a red circle"},  # strict: option text -> A, wrong; reference: "c" in "circle"
               "q3": {"answer": ""}}              # no answer: wrong for both
    return outputs, {"strict": 100 / 3, "reference": 200 / 3, "items": 3}


def write_mmstar(root: str):
    q = "How many?\nOptions: A: 2, B: 3, C: 4, D: 5"
    rows = [dict(index=i, question=q, image=png(), answer=a, category="count", l2_category="x")
            for i, a in enumerate(["B", "D", "C", "A"])]
    _parquet(os.path.join(root, "mmstar", "test.parquet"), rows)
    outputs = {"0": {"answer": "B"},                                   # right, right
               "1": {"answer": "The answer is D because A is wrong"},  # strict: two letters, "answer is D" -> D
               "2": {"answer": "Answer: C"},                           # right, right
               "3": {"answer": "a"}}  # lower case: strict finds no answer; reference: "A" in "a" is false
    return outputs, {"strict": 75.0, "reference": 75.0}


def write_ai2d(root: str):
    d = os.path.join(root, "ai2d")
    q0 = {"imageName": "0.png", "questions": {
        "Which part is the leaf?": {"answerTexts": ["w", "x", "y", "z"], "correctAnswer": 2, "questionId": "0.png-0"},
        "What eats the plant?": {"answerTexts": ["deer", "rock", "sun", "soil"], "correctAnswer": 0,
                                 "questionId": "0.png-1"}}}
    q1 = {"imageName": "1.png", "questions": {
        "Which stage is last?": {"answerTexts": ["egg", "larva", "pupa", "adult"], "correctAnswer": 3,
                                 "questionId": "1.png-0"}}}
    _write(os.path.join(d, "val_qa", "questions", "0.png.json"), json.dumps(q0))
    _write(os.path.join(d, "val_qa", "questions", "1.png.json"), json.dumps(q1))
    _write(os.path.join(d, "val_qa", "images", "0.png"), png())
    _write(os.path.join(d, "val_qa", "images", "1.png"), png())
    _write(os.path.join(d, "ai2d_test_ids.csv"), "1\n")
    outputs = {"0.png-0": {"answer": "C", "probs": [0.1, 0.2, 0.6, 0.1]},   # strict right, reference C right
               "0.png-1": {"answer": "B", "probs": [0.5, 0.5, 0.0, 0.0]},   # strict wrong; tie -> first (A) right
               "1.png-0": {"answer": "D.", "probs": [0.4, 0.3, 0.2, 0.1]}}  # strict right; reference A wrong
    return outputs, {"strict": 200 / 3, "reference": 200 / 3,
                     "by_category": {"strict": {"val": 50.0, "test": 100.0}, "reference": {"val": 100.0, "test": 0.0}}}


def write_textvqa(root: str):
    d = os.path.join(root, "text-vqa")
    data = [dict(question_id=1, image_id="img1", question="How many?", answers=["two"] * 4 + ["2"] * 3 + ["three"] * 3),
            dict(question_id=2, image_id="img1", question="What brand?",
                 answers=["the coca-cola"] * 2 + ["coca cola"] * 2 + ["pepsi"] * 6),
            dict(question_id=3, image_id="img2", question="Is it open?", answers=["yes"] * 2 + ["no"] * 8)]
    _write(os.path.join(d, "TextVQA_0.5.1_val.json"), json.dumps({"data": data}))
    ocr = [dict(question_id=q["question_id"], text=q["question"] + "\nReference OCR token: OPEN, 2")
           for q in data]
    _write(os.path.join(d, "textvqa_val_v051_ocr.jsonl"), "".join(json.dumps(o) + "\n" for o in ocr))
    _write(os.path.join(d, "train_val_images", "img1.jpg"), png())
    _write(os.path.join(d, "train_val_images", "img2.jpg"), png())
    outputs = {
        # "Two." -> "2" (period, number word): 7 of 10 answers are "2" -> 1.0 everywhere
        "1": {"ocr": "2", "pure": "Two."},
        # "Coca-Cola!" -> "coca cola" = "the coca-cola" (article, hyphen) = "coca cola": 4 matches -> 1.0;
        # reference OCR "pepsi": 6 matches -> 1.0
        "2": {"ocr": "pepsi", "pure": "Coca-Cola!"},
        # strict / pure "Yes, it is" -> "yes it is": 0; reference OCR "yes": 2 matches -> (2*1/3 + 8*2/3)/10 = 0.6
        "3": {"ocr": "yes", "pure": "Yes, it is"},
    }
    return outputs, {"strict": 200 / 3, "reference": 260 / 3, "pure": 200 / 3}


def write_pope(root: str):
    d = os.path.join(root, "pope")
    _write(os.path.join(d, "val_images", "COCO_val2014_1.jpg"), png())
    qs = {"adversarial": [("yes", "Yes, there is a dog."), ("no", "No.")],
          "popular": [("yes", "no"), ("no", "There is not a cat")],
          "random": [("yes", "yes"), ("no", "yes")]}
    outputs = {}
    for split, pairs in qs.items():
        lines = []
        for i, (label, out) in enumerate(pairs):
            lines.append(json.dumps(dict(question_id=i + 1, image="COCO_val2014_1.jpg",
                                         text="Is there a dog in the image?", label=label)))
            outputs[f"{split}-{i + 1}"] = {"answer": out}
        _write(os.path.join(d, f"coco_pope_{split}.json"), "\n".join(lines) + "\n")
    # strict (first sentence, no/not -> no): adversarial yes,no right right; popular no,no -> 1/2; random yes,yes 1/2
    # reference (exact "yes"/"no" after stripping ,.): adversarial 1/2; popular 0/2; random 1/2
    return outputs, {"strict": 200 / 3, "reference": 100 / 3,
                     "strict_splits": {"adversarial": dict(accuracy=100.0, precision=100.0, recall=100.0, f1=100.0,
                                                           yes_ratio=50.0),
                                       "popular": dict(accuracy=50.0, precision=0.0, recall=0.0, f1=0.0,
                                                       yes_ratio=0.0),
                                       "random": dict(accuracy=50.0, precision=50.0, recall=100.0, f1=200 / 3,
                                                      yes_ratio=100.0)},
                     "strict_f1": (100 + 0 + 200 / 3) / 3, "reference_f1": (0 + 0 + 200 / 3) / 3}


def write_mmmu(root: str):
    img = {"bytes": png(), "path": None}
    base = dict(image_1=img, image_2=None, image_3=None, image_4=None, image_5=None, image_6=None, image_7=None,
                explanation="", img_type="['Photos']", topic_difficulty="Easy")
    rows = [
        dict(base, id="validation_Art_1", question="<image 1> Which animal?", options="['cat', 'dog', 'bird']",
             answer="B", question_type="multiple-choice", subfield="Fine_Arts"),
        dict(base, id="validation_Math_2", question="What is 1+2? <image 1>", options="['1', '2', '3', '4']",
             answer="C", question_type="multiple-choice", subfield="Algebra"),
        dict(base, id="validation_Math_3", question="Total cost in <image 1>?", options="[]", answer="12.5",
             question_type="open", subfield="Algebra"),
        dict(base, id="validation_Math_4", question="How many sides? <image 1> <image 2>", options="[]",
             answer="['6', '6.0']", question_type="open", subfield="Geometry"),
    ]
    _parquet(os.path.join(root, "mmmu", "val.parquet"), rows)
    outputs = {"validation_Art_1": {"answer": "(B)"},   # both right
               # official: no "(C)", no " C " -> fewer than 6 words -> seeded random guess; harness: "C." -> C
               "validation_Math_2": {"answer": "C. 3"},
               # "is " -> "12.50 dollars" -> 12.5 == 12.5: both right
               "validation_Math_3": {"answer": "The total is 12.50 dollars"},
               # strict reads the list literal -> 6.0 right; reference compares with the string "['6', '6.0']": wrong
               "validation_Math_4": {"answer": "6"}}
    return outputs, {"reference": 75.0, "random_item": "validation_Math_2", "random_gold": "C",
                     "strict_without_random": 3}


def write_mathvista(root: str):
    d = os.path.join(root, "mathvista")
    base = dict(unit=None, precision=None, query="", decoded_image=None)
    rows = [dict(base, pid="1", question="Which count?", image="images/1.jpg", choices=["3", "4", "5"], answer="4",
                 question_type="multi_choice", answer_type="text"),
            dict(base, pid="2", question="How many?", image="images/1.jpg", choices=None, answer="7",
                 question_type="free_form", answer_type="integer"),
            dict(base, pid="3", question="Length?", image="images/1.jpg", choices=None, answer="2.5", precision=1.0,
                 question_type="free_form", answer_type="float"),
            dict(base, pid="4", question="Colour?", image="images/2.jpg", choices=["red", "blue"], answer="blue",
                 question_type="multi_choice", answer_type="text", decoded_image={"bytes": png(), "path": None})]
    _parquet(os.path.join(d, "testmini.parquet"), rows)
    _write(os.path.join(d, "images", "1.jpg"), png())  # 2.jpg absent: item 4 uses decoded_image
    outputs = {"1": {"answer": "B"},  # strict: letter -> "4" right; reference: "b" vs the gold letter B right
               "2": {"answer": "7"},                  # both right
               "3": {"answer": "The answer is 2.5"},  # strict: no rule applies, float() fails -> wrong; reference right
               "4": {"answer": "bluee"}}              # strict: nearest option "blue" right; reference vs "B" wrong
    return outputs, {"strict": 75.0, "reference": 75.0}


def write_mantis(root: str):
    a, b = {"bytes": png(), "path": None}, {"bytes": png((0, 0, 200)), "path": None}
    rows = [dict(id="m1", question="<image> <image> Which image shows a cat?", images=[a, b],
                 options=["(A) the first", "(B) the second"], answer="B", question_type="multi-choice",
                 category="compare"),
            dict(id="m2", question="How many dogs in <image>?", images=[a], options=[], answer="two",
                 question_type="short-answer", category="count"),
            dict(id="m3", question="<image> <image> <image> Which is red?", images=[a, b],
                 options=["(A) the first", "(B) the second"], answer="A", question_type="multi-choice",
                 category="compare")]
    _parquet(os.path.join(root, "mantis", "test.parquet"), rows)
    outputs = {"m1": {"answer": "B"},               # both right
               "m2": {"answer": "2"},               # strict "two" -> "2" right; reference "two" in "2" wrong
               "m3": {"answer": "(a) the first"}}   # strict by option text -> A right; reference "A" (case) wrong
    return outputs, {"strict": 100.0, "reference": 100 / 3}


def write_realworldqa(root: str):
    rows = [dict(image={"bytes": png(), "path": None}, answer="B",
                 question="Which object is closer?\nA. the car\nB. the tree\nPlease answer directly with only the "
                          "letter of the correct option and nothing else."),
            dict(image={"bytes": png(), "path": None}, answer="3",
                 question="How many lanes are there? Please answer directly with a single word or number.")]
    _parquet(os.path.join(root, "realworldqa", "test.parquet"), rows)
    outputs = {"0": {"answer": "B"},       # both right
               "1": {"answer": "Three"}}   # strict "three" -> "3" right; reference "3" in "three" wrong
    return outputs, {"strict": 100.0, "reference": 50.0}


def write_demo(root: str):
    d = os.path.join(root, "sft")
    recs = [
        {"id": "s1", "image": "images/00000.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "red"}]},
        {"id": "s2", "image": "images/00001.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat shape is in the image?"}, {"from": "gpt", "value": "a circle"},
            {"from": "human", "value": "Where is the circle?"}, {"from": "gpt", "value": "in the center"}]},
        {"id": "s3", "image": "images/00002.png", "conversations": [
            {"from": "human", "value": "<image>\nIs the shape a star? Answer Yes or No."},
            {"from": "gpt", "value": "No"}]}]
    _write(os.path.join(d, "llava.json"), json.dumps(recs))
    for i in range(3):
        _write(os.path.join(d, "images", f"0000{i}.png"), png())
    outputs = {"s1": {"answer": "Red."},     # both right
               "s2": {"answer": "circle"},   # strict (article dropped) right; reference "a circle" in "circle" wrong
               "s3": {"answer": "Yes"}}      # both wrong
    return outputs, {"strict": 200 / 3, "reference": 100 / 3}


WRITERS = {"mmbench": write_mmbench, "seedbench": write_seedbench, "mmstar": write_mmstar, "ai2d": write_ai2d,
           "textvqa": write_textvqa, "pope": write_pope, "mmmu": write_mmmu, "mathvista": write_mathvista,
           "mantis": write_mantis, "realworldqa": write_realworldqa, "demo": write_demo}
