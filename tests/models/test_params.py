import numpy as np
import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import VLMConfig, llm_preset, vision_preset


def test_shape_mismatch_names_the_tensor():
    config = VLMConfig(vision=vision_preset("siglip-tiny"), llm=llm_preset("qwen2-tiny"), tokens_per_image=4)
    tree = {k: np.zeros(v.shape, v.dtype) for k, v in P.flatten(P.param_tree(P.abstract_vlm(config))).items()}
    nested = {}
    for name, value in tree.items():
        node = nested
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    P.vlm_from_params(config, nested)
    nested["llm"]["norm"]["scale"] = np.zeros(3, np.float32)
    with pytest.raises(UserError, match="llm/norm/scale.*\\(3,\\).*\\(64,\\)"):
        P.vlm_from_params(config, nested)
    del nested["llm"]["norm"]
    with pytest.raises(UserError, match="missing"):
        P.vlm_from_params(config, nested)
