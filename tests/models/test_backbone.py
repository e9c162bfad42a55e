import pytest
import torch
from transformers import BertConfig, CLIPConfig, CLIPModel, T5Config, ViTConfig

from neuroflow.models.backbone import dedupe_tied, hidden_size_of, load_backbone, resolve_family, tied_aliases


@pytest.mark.parametrize(
    ("config", "family"),
    [(BertConfig(), "encoder"), (T5Config(), "seq2seq"), (ViTConfig(), "vision"), (CLIPConfig(), "vision")],
)
def test_auto_family(config, family):
    assert resolve_family(config, "auto") == family


def test_contradicting_family_is_refused():
    with pytest.raises(ValueError, match="family 'encoder' was given for the encoder-decoder model 't5'"):
        resolve_family(T5Config(), "encoder")


def test_clip_checkpoint_loads_its_vision_tower(tmp_path):
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 50},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 16, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(tmp_path)
    model, family = load_backbone(str(tmp_path))
    assert family == "vision" and type(model).__name__ == "CLIPVisionModel"
    assert hidden_size_of(model.config) == 16
    out = model(pixel_values=torch.zeros(2, 3, 16, 16))
    assert out.pooler_output.shape == (2, 16)


def test_tied_aliases_are_dropped_once():
    shared = torch.zeros(3, 2)
    state = {"shared.weight": shared, "lm_head.weight": shared, "other": torch.ones(2)}
    assert list(dedupe_tied(state)) == ["shared.weight", "other"]
    assert tied_aliases(state) == {"lm_head.weight": "shared.weight"}
