"""Model configurations and named sizes.

Configs are frozen dataclasses (hashable, usable as static jit args) that round-trip through plain dicts, so a
checkpoint can store them as JSON. Numbers of the real presets are the Hugging Face / timm ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from oq2vl_jax.errors import UserError

GELU_EXACT = "gelu"  # erf GELU: timm's nn.GELU, the reference's vision tower and projector
GELU_TANH = "gelu_tanh"  # tanh approximation: HF SigLIP ("gelu_pytorch_tanh") and big_vision
ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "cudnn_packed", "splash")


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 384
    layer_norm_eps: float = 1e-6
    hidden_act: str = GELU_EXACT
    # Block whose output is returned; negative counts from the end (-2 = second-to-last, as the reference uses).
    # Blocks after it are neither built nor computed.
    feature_layer: int = -2

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def num_blocks_run(self) -> int:
        """How many blocks are built and run: feature_layer resolved against depth, plus one."""
        index = self.feature_layer if self.feature_layer >= 0 else self.depth + self.feature_layer
        return index + 1

    def validate(self) -> None:
        if self.width % self.num_heads:
            raise UserError(f"vision width {self.width} is not divisible by num_heads {self.num_heads}")
        if not 1 <= self.num_blocks_run <= self.depth:
            raise UserError(f"vision feature_layer {self.feature_layer} is outside a depth-{self.depth} tower")
        if self.hidden_act not in (GELU_EXACT, GELU_TANH):
            raise UserError(f"vision hidden_act must be '{GELU_EXACT}' or '{GELU_TANH}', got '{self.hidden_act}'")
        if self.image_size < self.patch_size:
            raise UserError(f"vision image_size {self.image_size} is smaller than patch_size {self.patch_size}")


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
    """SigLIP text tower (big_vision `text_transformer`, HF `SiglipTextModel`, open_clip `TextTransformer`):
    bidirectional pre-LN blocks like the vision tower's, final LayerNorm, the last position's state pooled ("last"),
    a linear head to `projection_dim`. Sequences are padded to exactly `max_length` (the pooled token is the last)."""

    vocab_size: int = 32000
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    max_length: int = 64
    projection_dim: int = 1152
    layer_norm_eps: float = 1e-6
    hidden_act: str = GELU_TANH

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def validate(self) -> None:
        if self.width % self.num_heads:
            raise UserError(f"text width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.hidden_act not in (GELU_EXACT, GELU_TANH):
            raise UserError(f"text hidden_act must be '{GELU_EXACT}' or '{GELU_TANH}', got '{self.hidden_act}'")
        if self.depth < 1 or self.max_length < 1:
            raise UserError("text depth and max_length must be >= 1")


@dataclasses.dataclass(frozen=True)
class SiglipPairConfig:
    """Both SigLIP towers, for image-text scores. The vision tower runs all its blocks (feature_layer -1), then its
    final LayerNorm and MAP head."""

    vision: SiglipConfig = SiglipConfig(feature_layer=-1)
    text: SiglipTextConfig = SiglipTextConfig()

    def validate(self) -> None:
        self.vision.validate()
        self.text.validate()
        if self.vision.num_blocks_run != self.vision.depth:
            raise UserError(f"image embeddings need every vision block: feature_layer must be -1, got "
                            f"{self.vision.feature_layer}")
        if self.text.projection_dim != self.vision.width:
            raise UserError(f"text projection_dim {self.text.projection_dim} differs from the image embedding "
                            f"width {self.vision.width}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SiglipPairConfig":
        return cls(vision=_from_dict(SiglipConfig, d["vision"]), text=_from_dict(SiglipTextConfig, d["text"]))


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    def validate(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"llm num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise UserError(f"llm head_dim {self.head_dim} must be even for rotary embeddings")


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    vision: SiglipConfig = SiglipConfig()
    llm: Qwen2Config = Qwen2Config()
    # Image tokens after pooling the patch grid: 144 (12x12, pre-training) or 729 (27x27 identity, SFT).
    tokens_per_image: int = 144

    @property
    def pool_size(self) -> int:
        return math.isqrt(self.tokens_per_image)

    def validate(self) -> None:
        self.vision.validate()
        self.llm.validate()
        n = self.pool_size
        if n * n != self.tokens_per_image or not 1 <= n <= self.vision.grid:
            raise UserError(f"tokens_per_image={self.tokens_per_image} must be a square n*n with 1 <= n <= "
                            f"{self.vision.grid} (the vision patch grid)")

    def replace(self, **kwargs) -> "VLMConfig":
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VLMConfig":
        return cls(vision=_from_dict(SiglipConfig, d["vision"]), llm=_from_dict(Qwen2Config, d["llm"]),
                   tokens_per_image=int(d["tokens_per_image"]))


def _from_dict(cls, d: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise UserError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    return cls(**d)


VISION_PRESETS = {
    "siglip-so400m-384": SiglipConfig(),
    "siglip-tiny": SiglipConfig(width=32, depth=3, mlp_dim=64, num_heads=4, patch_size=4, image_size=28),
}

PAIR_PRESETS = {
    "siglip-so400m-384-pair": SiglipPairConfig(),  # google/siglip-so400m-patch14-384 (big_vision tanh GELU)
    "siglip-tiny-pair": SiglipPairConfig(
        vision=dataclasses.replace(VISION_PRESETS["siglip-tiny"], feature_layer=-1, hidden_act=GELU_TANH),
        text=SiglipTextConfig(vocab_size=256, width=32, depth=2, mlp_dim=64, num_heads=4, max_length=16,
                              projection_dim=32)),
}

LLM_PRESETS = {
    "qwen2.5-0.5b": Qwen2Config(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                                num_kv_heads=2, head_dim=64),
    "qwen2.5-1.5b": Qwen2Config(),
    "qwen2.5-3b": Qwen2Config(hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
                              num_kv_heads=2, head_dim=128),
    "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False),
    "qwen2-tiny": Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, rope_theta=10000.0),
}


def vision_preset(name: str) -> SiglipConfig:
    if name not in VISION_PRESETS:
        raise UserError(f"unknown vision preset '{name}'; choose one of {sorted(VISION_PRESETS)}")
    return VISION_PRESETS[name]


def llm_preset(name: str) -> Qwen2Config:
    if name not in LLM_PRESETS:
        raise UserError(f"unknown llm preset '{name}'; choose one of {sorted(LLM_PRESETS)}")
    return LLM_PRESETS[name]


def open_qwen2vl(tokens_per_image: int = 144) -> VLMConfig:
    """The paper's model: SigLIP So400m/14@384 + avg-pool projector + Qwen2.5-1.5B(-Instruct)."""
    return VLMConfig(vision=vision_preset("siglip-so400m-384"), llm=llm_preset("qwen2.5-1.5b"),
                     tokens_per_image=tokens_per_image)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """How the model runs (not what it is): never stored as architecture, free to change between runs."""

    compute_dtype: str = "float32"  # "bfloat16" for training on accelerators
    attention: str = "auto"  # one of ATTENTION_BACKENDS
    remat: str = "none"  # decoder layer remat policy: none | full | dots | dots_no_batch | save_attention
    vision_chunk: int = 8  # image slots per vision-tower step; chunks holding no valid image are skipped
    loss_chunk: int = 2048  # tokens per cross-entropy chunk (never holds fp32 [tokens, vocab] logits at once)
    # Reproduce how the reference trains packed rows: plain causal attention over the whole row and continuous
    # positions 0..L-1 (docs/reference_notes.md §6). Off: per-document masking and positions.
    reference_compat: bool = False
    splash_interpret: bool = False  # run the TPU splash kernel in interpret mode (tests on CPU)

    def validate(self) -> None:
        if self.attention not in ATTENTION_BACKENDS:
            raise UserError(f"model.attention must be one of {ATTENTION_BACKENDS}, got '{self.attention}'")
        if self.remat not in REMAT_POLICIES:
            raise UserError(f"model.remat must be one of {REMAT_POLICIES}, got '{self.remat}'")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise UserError(f"model.compute_dtype must be float32 or bfloat16, got '{self.compute_dtype}'")
        if self.vision_chunk < 1 or self.loss_chunk < 1:
            raise UserError("model.vision_chunk and model.loss_chunk must be >= 1")


REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_attention")
