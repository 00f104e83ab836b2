"""The bad-input matrix (docs/reliability.md): each row is one bad input, the call that receives it, and the
error (type + message fragment) or warning it must produce."""
import json
import sys
import os

import pytest
import torch
from transformers import BertConfig, BertModel, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from training_matrix import TINY_BERT  # noqa: E402
from test_vision import tiny as tiny_vision  # noqa: E402

from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel  # noqa: E402
from mrl_hf.trainer import MRLTrainer  # noqa: E402

IDS = torch.ones(2, 6, dtype=torch.long)


def mlm():
    torch.manual_seed(0)
    return MRLBertForMaskedLM(MRLBertConfig(nesting_list=[4, 8, 16], **TINY_BERT))


def saved_mlm(tmp_path, edit=None):
    mlm().save_pretrained(tmp_path / "ckpt")
    if edit:
        edit(tmp_path / "ckpt")
    return MRLBertForMaskedLM.from_pretrained(tmp_path / "ckpt")


def edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


def truncate_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def corrupt_weights(folder):
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 64)


def plain_bert_into_mlm(tmp_path):
    BertModel(BertConfig(**TINY_BERT)).save_pretrained(tmp_path / "plain")
    model, info = MRLBertForMaskedLM.from_pretrained(tmp_path / "plain", output_loading_info=True)
    return info


def nan_pixels_in_trainer(tmp_path):
    model = tiny_vision("resnet")
    data = [{"pixel_values": torch.full((1, 16, 16), float("nan")), "labels": 0}] * 4
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to=[],
                             disable_tqdm=True, use_cpu=True, save_strategy="no")
    MRLTrainer(model=model, args=args, train_dataset=data).train()


# (row id, call taking tmp_path, expected exception type, message fragment)
MATRIX = [
    # nesting lists
    ("nesting-not-increasing", lambda t: MRLBertConfig(nesting_list=[8, 4, 16], **TINY_BERT),
     ValueError, r"not strictly increasing .* \[4, 8, 16\]"),
    ("nesting-exceeds-dim", lambda t: MRLBertConfig(nesting_list=[8, 16, 64], **TINY_BERT),
     ValueError, "ends with 64, but the embedding dim is 16"),
    ("nesting-zero", lambda t: MRLBertConfig(nesting_list=[0, 16], **TINY_BERT), ValueError, "contains 0"),
    ("nesting-empty", lambda t: MRLBertConfig(nesting_list=[], **TINY_BERT), ValueError, "nesting_list is empty"),
    ("nesting-float", lambda t: MRLBertConfig(nesting_list=[4.5, 16], **TINY_BERT), TypeError, "must be an int"),
    # truncate_dim
    ("truncate-dim-zero", lambda t: MRLBertConfig(truncate_dim=0, **TINY_BERT), ValueError, r"truncate_dim=0 .* 1\.\.16"),
    ("truncate-dim-too-big", lambda t: MRLBertConfig(truncate_dim=17, **TINY_BERT), ValueError, "truncate_dim=17"),
    ("truncate-dim-string", lambda t: MRLBertConfig(truncate_dim="8", **TINY_BERT), TypeError, "must be an int"),
    ("truncate-dim-from-pretrained", lambda t: (mlm().save_pretrained(t / "c"),
                                                MRLBertForMaskedLM.from_pretrained(t / "c", truncate_dim=99)),
     ValueError, "truncate_dim=99 is out of range"),
    ("truncate-dim-forward", lambda t: MRLBertModel(MRLBertConfig(**TINY_BERT))(IDS, truncate_dim=0),
     ValueError, "dim=0 is out of range"),
    # checkpoints
    ("checkpoint-nesting-exceeds-hidden", lambda t: saved_mlm(t, edit_config(nesting_list=[4, 8, 32])),
     ValueError, "ends with 32, but the embedding dim is 16"),
    ("checkpoint-truncated-safetensors", lambda t: saved_mlm(t, truncate_weights),
     ValueError, "truncated or corrupt"),
    ("checkpoint-corrupt-safetensors", lambda t: saved_mlm(t, corrupt_weights), ValueError, "truncated or corrupt"),
    # inputs
    ("image-wrong-size", lambda t: tiny_vision("vit")(torch.randn(2, 1, 8, 8)), ValueError, r"resize the images"),
    ("image-wrong-channels", lambda t: tiny_vision("resnet")(torch.randn(2, 3, 16, 16)), ValueError, "3 channels"),
    ("image-label-out-of-range", lambda t: tiny_vision("resnet")(torch.randn(2, 1, 16, 16), labels=torch.tensor([0, 7])),
     ValueError, "label 7 is outside 0..4"),
    ("empty-batch-text", lambda t: mlm()(torch.zeros(0, 6, dtype=torch.long), labels=torch.zeros(0, 6, dtype=torch.long)),
     ValueError, "Skip empty batches"),
    ("empty-batch-image", lambda t: tiny_vision("resnet")(torch.randn(0, 1, 16, 16)), ValueError, "empty batch"),
    ("nan-pixels-in-training", nan_pixels_in_trainer, FloatingPointError, r"non-finite loss at nesting dim\(s\) \['8', '16', '32'\]"),
]


@pytest.mark.parametrize("call, error, match", [row[1:] for row in MATRIX], ids=[row[0] for row in MATRIX])
def test_bad_input_raises_the_documented_error(call, error, match, tmp_path):
    with pytest.raises(error, match=match):
        call(tmp_path)


def test_plain_bert_checkpoint_into_masked_lm_reports_the_new_head(tmp_path):
    """Not an error: the encoder loads, and the MLM head (absent from a bare BertModel) is reported as missing,
    i.e. newly initialised; the pooler, which the MLM model does not use, is ignored quietly."""
    info = plain_bert_into_mlm(tmp_path)
    assert {"cls.predictions.transform.dense.weight", "cls.predictions.bias"} <= set(info["missing_keys"])
    assert not any(k.startswith("bert.encoder") or k.startswith("encoder") for k in info["missing_keys"])
    assert set(info["unexpected_keys"]) == set()
