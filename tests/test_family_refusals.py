"""A family class refuses a checkpoint of a family it cannot run (it would load it with at most a transformers warning
and compute something else) and names the class that runs it."""
import pytest
import torch
from test_masked_lm import FAMILIES as TINY_TEXT
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from mrl_hf.modeling import (
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLResNetForImageClassification,
    MRLViTForImageClassification,
)

CASES = {
    **{family: TINY_TEXT[family] for family in ("xlm-roberta", "mpnet", "modernbert")},
    "convnext": dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_checkpoint_of_another_family_is_refused_naming_the_class_that_runs_it(family, tmp_path):
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **CASES[family])
    AutoModel.from_config(config).save_pretrained(tmp_path / "base")
    if family == "convnext":
        for cls in (MRLResNetForImageClassification, MRLViTForImageClassification):
            with pytest.raises(ValueError, match="'convnext' checkpoint.*Load it with MRLModelForImageClassification"):
                cls.from_pretrained(tmp_path / "base", num_labels=3)
        return
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "mlm")
    for cls, folder in ((MRLBertModel, "base"), (MRLBertForMaskedLM, "mlm")):
        with pytest.raises(ValueError, match=f"'{family}' checkpoint.*MRLModelForTextEmbedding.*MRLModelForMaskedLM"):
            cls.from_pretrained(tmp_path / folder)


def test_families_the_generic_text_classes_cannot_run_are_refused_by_name(tmp_path):
    """A T5 encoder checkpoint (sentence-T5 / GTR layout) says is_encoder_decoder: false, and AutoModel built the whole
    T5 with a random decoder, which crashed in encode; CLIP passed the input_ids check and crashed in its image tower;
    MobileBERT's masked LM head never calls its decoder and failed with a size error."""
    from transformers import CLIPConfig, T5Config, T5EncoderModel

    from mrl_hf.modeling import (
        MRLMaskedLMConfig,
        MRLModelForMaskedLM,
        MRLModelForTextEmbedding,
        MRLTextEmbeddingConfig,
    )

    T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(
        tmp_path / "t5")
    with pytest.raises(ValueError, match="'t5' backbone is an encoder-decoder model"):
        MRLModelForTextEmbedding.from_pretrained(tmp_path / "t5", nesting_list=[8, 16])
    text = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    clip = CLIPConfig(text_config=text, vision_config=dict(text, image_size=16, patch_size=8))
    with pytest.raises(ValueError, match="CLIPModel is a text-and-image model that needs its images.*text_config"):
        MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=clip, nesting_list=[8, 16]))
    vilt = AutoConfig.for_model("vilt", **text, image_size=16, patch_size=8, max_image_length=4)
    with pytest.raises(ValueError, match="ViltModel is a text-and-image model that needs its images"):
        MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=vilt, nesting_list=[8, 16]))
    mobilebert = AutoConfig.for_model("mobilebert", vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, embedding_size=8,
                                      intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=1)
    with pytest.raises(ValueError, match="'mobilebert' masked LM head does not apply its decoder"):
        MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=mobilebert))


def test_what_those_refusals_leave_alone():
    """Decoder-only families listed among seq2seq LMs (audio LMs: is_encoder_decoder false by default) and
    vision-language decoders that take text alone (Gemma 3) still build."""
    from mrl_hf.modeling import MRLModelForTextEmbedding, MRLTextEmbeddingConfig
    from mrl_hf.modeling.auto_text import is_seq2seq_family

    assert is_seq2seq_family(AutoConfig.for_model("t5")) and is_seq2seq_family(AutoConfig.for_model("bart"))
    assert not any(is_seq2seq_family(AutoConfig.for_model(t)) for t in ("qwen2_audio", "voxtral", "llava", "qwen3"))
    gemma3 = AutoConfig.for_model(
        "gemma3", text_config=dict(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=8, intermediate_size=32),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=28, patch_size=14), mm_tokens_per_image=4)
    model = MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=gemma3, nesting_list=[8, 16],
                                                            pooling="last_token"))
    assert model(input_ids=torch.randint(1, 200, (1, 5))).embeddings.shape == (1, 16)


def test_default_length_without_a_stated_limit():
    """XLNet states max_position_embeddings=-1 and a tokenizer may state int(1e30): encode crashed on either."""
    from types import SimpleNamespace

    from mrl_hf.modeling.text_common import default_max_length

    def config(**text):
        settings = SimpleNamespace(model_type="x", pad_token_id=0, **text)
        return SimpleNamespace(get_text_config=lambda: settings)

    assert default_max_length(SimpleNamespace(model_max_length=int(1e30)), config(max_position_embeddings=-1)) == 512
    assert default_max_length(SimpleNamespace(model_max_length=int(1e30)), config()) == 512
    assert default_max_length(SimpleNamespace(model_max_length=128), config(max_position_embeddings=-1)) == 128
    assert default_max_length(SimpleNamespace(model_max_length=int(1e30)), config(max_position_embeddings=64)) == 64
