"""`convert import --from llava-unified`: a tiny LLaVA-Unified `llava_qwen` checkpoint (tiny transformers modules
saved under LlavaQwenForCausalLM's names: a Qwen2ForCausalLM whose `model` holds `vision_tower.vision_tower` =
SiglipVisionModel and `mm_projector` = `aapool_mlp` or `mlp2x_gelu`) imports through the CLI and matches a torch
composition of the same weights; `curate mlm --ckpt` then scores shards with it; unsupported settings are refused
with one line."""

import io
import json
import os
import shutil

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file

from fixtures.convert import GRID, VISION, hf_llm, hf_siglip_vision, tiny_tokenizer_dir  # noqa: F401
from fixtures.curate import write_datacomp_shards
from fixtures.model import randomize_
from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert.__main__ import main as convert_main
from oq2vl_jax.curate import mlm_filter, shards as shards_lib
from oq2vl_jax.data import images as image_lib
from oq2vl_jax.models.params import vlm_from_params

LOGIT_TOLERANCE = 1e-4
IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id (llava/constants.py), replaced by the image features
TASK = "image_text_matching"
# config.json keys as LLaVA-Unified's train.py / initialize_vision_modules write them for an MLM-Filter run
LLAVA_CONFIG = {
    "model_type": "llava_qwen", "architectures": ["LlavaQwenForCausalLM"],
    "mm_vision_tower": "google/siglip-so400m-patch14-384", "mm_hidden_size": VISION["hidden_size"],
    "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
    "mm_patch_merge_type": "flat", "mm_num_image_tokens": 256, "image_aspect_ratio": "pad",
    "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "mm_projector_lr": None, "use_mm_proj": True,
    "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": False,
    "tokenizer_model_max_length": 4096, "tokenizer_padding_side": "right", "rope_scaling": None,
}


class TorchLlavaQwen:
    """The upstream forward on the same weights: SigLIP hidden_states[select_layer] -> projector -> spliced into the
    Qwen2 input embeddings in place of IMAGE_TOKEN_INDEX -> logits."""

    def __init__(self, qwen, tower, projector, select_layer=-2):
        self.qwen, self.tower, self.projector, self.layer = qwen, tower, projector, select_layer

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The SigLIP image processor MLM_Filter's scoring scripts call (transformers' PIL one: bicubic squash)."""
        processor = transformers.SiglipImageProcessorPil(
            size={"height": VISION["image_size"], "width": VISION["image_size"]}, resample=3,
            image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]

    @torch.no_grad()
    def logits(self, ids: list[int], pixels: torch.Tensor) -> np.ndarray:
        features = self.projector(self.tower(pixels, output_hidden_states=True).hidden_states[self.layer])[0]
        k = ids.index(IMAGE_TOKEN_INDEX)
        embed = self.qwen.model.embed_tokens
        embeds = torch.cat([embed(torch.tensor(ids[:k])), features, embed(torch.tensor(ids[k + 1:]))])
        return self.qwen(inputs_embeds=embeds[None]).logits[0].numpy()


def save_sharded(path: str, state: dict, shards: int = 3) -> None:
    """safetensors shards + model.safetensors.index.json, as HF's save_pretrained writes them."""
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[i::shards]}
        save_file(part, os.path.join(path, file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)


class AvgPoolProjector(torch.nn.Module):
    """LLaVA-Unified's `aapool_mlp` (llava/model/multimodal_projector/builder.py): AdaptiveAvgPool2d of the patch
    grid, then Linear -> GELU -> Linear as `mlp_projector`."""

    def __init__(self, tokens: int, d_in: int, d: int):
        super().__init__()
        side = int(tokens ** 0.5)
        self.sampler = torch.nn.AdaptiveAvgPool2d((side, side))
        self.mlp_projector = torch.nn.Sequential(torch.nn.Linear(d_in, d), torch.nn.GELU(), torch.nn.Linear(d, d))

    def forward(self, x):
        b, n, d = x.shape
        grid = x.transpose(1, 2).reshape(b, d, int(n ** 0.5), int(n ** 0.5))
        return self.mlp_projector(self.sampler(grid).flatten(2).transpose(1, 2))


def write_unified(path: str, qwen, tokenizer_dir: str, projector_type: str, **settings) -> TorchLlavaQwen:
    """A checkpoint in 3 safetensors shards with an index, config and tokenizer. Names as
    LlavaQwenForCausalLM.state_dict() has them under the transformers 4 LLaVA-Unified pins (SiglipVisionModel keeps
    its `vision_model.` level there); the tied lm_head is not written, as save_pretrained drops it."""
    tower = hf_siglip_vision("gelu_pytorch_tanh", seed=5)
    config = LLAVA_CONFIG | {"mm_projector_type": projector_type} | settings
    if projector_type == "aapool_mlp":
        projector = AvgPoolProjector(config["mm_num_image_tokens"], VISION["hidden_size"], 64)
    else:
        projector = torch.nn.Sequential(torch.nn.Linear(VISION["hidden_size"], 64), torch.nn.GELU(),
                                        torch.nn.Linear(64, 64))
    randomize_(projector, seed=6)
    state = {k: v for k, v in qwen.state_dict().items() if k != "lm_head.weight"}
    state |= {"model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model."): v
              for k, v in tower.state_dict().items()}
    state |= {"model.mm_projector." + k: v for k, v in projector.state_dict().items()}
    os.makedirs(path)
    save_sharded(path, {k: v.detach().clone() for k, v in state.items()})
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(qwen.config.to_dict() | config, f, indent=2)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), path)
    return TorchLlavaQwen(qwen, tower, projector, config["mm_vision_select_layer"])


@pytest.fixture(scope="module")
def unified(tmp_path_factory, hf_llm, tiny_tokenizer_dir):
    """(directory, TorchLlavaQwen): mlp2x_gelu over every patch, features of the second-to-last block."""
    path = str(tmp_path_factory.mktemp("llava_unified") / "mlm-filter-qwen-tiny")
    return path, write_unified(path, hf_llm[1], tiny_tokenizer_dir, "mlp2x_gelu")


@pytest.fixture(scope="module")
def unified_pool(tmp_path_factory, hf_llm, tiny_tokenizer_dir):
    """(directory, TorchLlavaQwen): LLaVA-Unified's MLM-Filter recipe (scripts/mlm_filter/finetune.sh): aapool_mlp,
    features of the last block; 4x4 tokens from the 7x7 grid (overlapping windows, as 12x12 from 27x27)."""
    path = str(tmp_path_factory.mktemp("llava_unified_pool") / "mlm-filter-qwen-tiny")
    return path, write_unified(path, hf_llm[1], tiny_tokenizer_dir, "aapool_mlp", mm_vision_select_layer=-1,
                               mm_num_image_tokens=16)


def with_config(src: str, dst: str, **changes) -> str:
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del config[key]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


def import_cli(src: str, out: str, *extra: str) -> int:
    return convert_main(["import", "--from", "llava-unified", src, "--out", out, "--vision-heads", "4", *extra])


@pytest.fixture(scope="module")
def imported(unified, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ck") / "mlm_filter")
    assert import_cli(unified[0], out) == 0
    return out


@pytest.fixture(scope="module")
def imported_pool(unified_pool, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ck_pool") / "mlm_filter")
    assert import_cli(unified_pool[0], out) == 0
    return out


def test_checkpoint_has_the_upstream_names(unified, unified_pool):
    with open(os.path.join(unified_pool[0], "model.safetensors.index.json")) as f:
        assert {"model.mm_projector.mlp_projector.0.weight", "model.mm_projector.mlp_projector.2.bias"} <= set(
            json.load(f)["weight_map"])
    with open(os.path.join(unified[0], "model.safetensors.index.json")) as f:
        names = set(json.load(f)["weight_map"])
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.bias", "model.embed_tokens.weight",
            "model.vision_tower.vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight",
            "model.vision_tower.vision_tower.vision_model.post_layernorm.weight",
            "model.vision_tower.vision_tower.vision_model.head.probe"} <= names
    assert "lm_head.weight" not in names  # tied, as Qwen2.5-1.5B


@pytest.mark.parametrize("source, ckpt, tokens, feature_layer", [("unified", "imported", GRID * GRID, -2),
                                                                  ("unified_pool", "imported_pool", 16, -1)])
def test_logits_match_the_torch_composition(request, source, ckpt, tokens, feature_layer):
    torch_model, imported = request.getfixturevalue(source)[1], request.getfixturevalue(ckpt)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8))
    png = io.BytesIO()
    image.save(png, format="PNG")
    # the curate/inference preprocessing (decode_image + the model's normalisation) is the processor's, to 1e-6
    ours_pixels = image_lib.decode_image(png.getvalue(), VISION["image_size"])[0]
    theirs_pixels = torch_model.pixels(image)
    assert np.allclose(theirs_pixels[0].permute(1, 2, 0).numpy(), (ours_pixels / 255.0 - 0.5) / 0.5, atol=1e-6)

    ids = [5, 17, 3, IMAGE_TOKEN_INDEX, 9, 200, 42, 7]
    theirs = torch_model.logits(ids, theirs_pixels)
    k = ids.index(IMAGE_TOKEN_INDEX)
    layout = ids[:k] + [0] * tokens + ids[k + 1:]
    n = len(layout)
    batch = {"input_ids": np.array([layout], np.int32), "segment_ids": np.ones((1, n), np.int32),
             "positions": np.arange(n, dtype=np.int32)[None],
             "image_mask": np.array([[False] * k + [True] * tokens + [False] * (len(ids) - k - 1)]),
             "images": ours_pixels[None, None], "image_valid": np.ones((1, 1), bool)}
    config, params, _ = checkpoint_io.load_params(imported)
    assert (config.tokens_per_image, config.vision.feature_layer, config.vision.num_heads) == (tokens, feature_layer, 4)
    ours = np.asarray(vlm_from_params(config, jax.tree.map(np.asarray, params))(batch))[0]
    assert ours.shape == theirs.shape
    assert np.max(np.abs(ours - theirs)) < LOGIT_TOLERANCE


def test_vision_from_the_tower_directory_is_the_same_import(unified, imported, tmp_path):
    """Without the tower in the checkpoint, --vision DIR (what LLaVA-Unified's load_model reads) gives it."""
    tower_dir = str(tmp_path / "siglip")
    unified[1].tower.save_pretrained(tower_dir)
    bare = str(tmp_path / "bare")
    os.makedirs(bare)
    for name in os.listdir(unified[0]):
        if not name.endswith(".safetensors") and name != "model.safetensors.index.json":
            shutil.copy(os.path.join(unified[0], name), bare)
    from safetensors.numpy import load_file, save_file
    tensors = {}
    for name in os.listdir(unified[0]):
        if name.endswith(".safetensors"):
            tensors |= {k: v for k, v in load_file(os.path.join(unified[0], name)).items()
                        if not k.startswith("model.vision_tower.")}
    save_file(tensors, os.path.join(bare, "model.safetensors"))
    out = str(tmp_path / "ck")
    assert convert_main(["import", "--from", "llava-unified", bare, "--out", out, "--vision", tower_dir]) == 0
    (c1, p1, _), (c2, p2, _) = checkpoint_io.load_params(out), checkpoint_io.load_params(imported)
    assert c1 == c2
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # a tower trained with the LLM (unfreeze_mm_vision_tower) is the checkpoint's copy upstream: --vision is refused
    trained = with_config(unified[0], str(tmp_path / "trained"), unfreeze_mm_vision_tower=True)
    assert convert_main(["import", "--from", "llava-unified", trained, "--out", str(tmp_path / "x"), "--vision",
                         tower_dir]) == 2


@pytest.mark.parametrize("changes, named", [
    ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio='anyres_max_9'"),
    ({"mm_patch_merge_type": "spatial_unpad"}, "mm_patch_merge_type='spatial_unpad'"),
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, "mm_vision_tower 'openai/clip-vit-large-patch14-336'"),
    ({"mm_projector_type": "linear"}, "mm_projector_type='linear'"),
    ({"mm_projector_type": None}, "mm_projector_type='linear' (its default)"),
    ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature='cls_patch'"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end=True"),
    ({"mm_vision_select_layer": 0}, "mm_vision_select_layer 0"),
    ({"model_type": "llava_llama"}, "model_type 'llava_llama'"),
    ({"vision_tower_pretrained": ""}, "vision_tower_pretrained marks a LLaVA-NeXT checkpoint"),
    ({"mm_projector_type": "aapool_mlp", "mm_num_image_tokens": 20}, "mm_num_image_tokens=20"),
])
def test_unsupported_settings_are_refused_in_one_line(unified, tmp_path, capsys, changes, named):
    src = with_config(unified[0], str(tmp_path / "src"), **changes)
    out = str(tmp_path / "ck")
    assert import_cli(src, out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and named in err, err
    assert not os.path.exists(out)


def test_unknown_head_count_is_one_line(unified, tmp_path, capsys):
    out = str(tmp_path / "ck")
    assert convert_main(["import", "--from", "llava-unified", unified[0], "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--vision-heads" in err and not os.path.exists(out)


def test_curate_mlm_scores_with_the_imported_filter(unified_pool, imported_pool, tmp_path):
    """End to end through both CLIs; the written text of a sample is the torch composition's greedy decode."""
    from oq2vl_jax.curate.__main__ import main as curate_main
    root = write_datacomp_shards(str(tmp_path / "dc"))
    out = str(tmp_path / "mlm")
    assert curate_main(["mlm", "--ckpt", imported_pool, "--shards", os.path.join(root, "00000000.tar"), "--out", out,
                        "--tasks", TASK, "--batch-size", "8"]) == 0  # one shard, one batch: one compile
    table = pq.read_table(os.path.join(out, f"00000000_{TASK}.parquet")).to_pydict()
    sample = next(shards_lib.iter_samples(os.path.join(root, "00000000.tar")))
    assert table["key"][0] == sample["key"] and len(table[f"{TASK}_score"]) == 5

    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(imported_pool, "tokenizer"))
    encode = lambda text: tok(text, add_special_tokens=False).input_ids
    ids = mlm_filter.prompt_ids(encode, sample["caption"], TASK, IMAGE_TOKEN_INDEX, encode(" ")[-1])
    torch_model = unified_pool[1]
    pixels = torch_model.pixels(Image.open(io.BytesIO(sample["image"])))
    generated = []
    for _ in range(mlm_filter.MAX_NEW_TOKENS):
        generated.append(int(np.argmax(torch_model.logits(ids + generated, pixels)[-1])))
    assert table[f"{TASK}_score"][0] == tok.decode(generated, skip_special_tokens=True)


def test_missing_tokenizer_is_one_line_before_reading_weights(unified, tmp_path, capsys):
    src = str(tmp_path / "src")
    os.makedirs(src)
    shutil.copy(os.path.join(unified[0], "config.json"), src)  # no weights either: the tokenizer is checked first
    assert import_cli(src, str(tmp_path / "ck")) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no tokenizer.json" in err and "--tokenizer" in err
