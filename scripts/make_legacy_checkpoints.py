"""Write tiny checkpoints of every mrl_hf model class, plus their outputs on fixed inputs, into a folder.

The folder committed as ``tests/fixtures/legacy_checkpoints`` was written by this script at commit ac7f4eb (before the
modeling code was reshaped for any backbone); ``tests/test_legacy_checkpoints.py`` loads each with today's code and
checks the outputs are unchanged. Re-run it only to add a class, never to "fix" a failing comparison:

    python scripts/make_legacy_checkpoints.py tests/fixtures/legacy_checkpoints
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import BertConfig, ResNetConfig, ViTConfig

from mrl_hf.modeling import (
    MRLAlignConfig,
    MRLAlignModel,
    MRLBertConfig,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLResNetConfig,
    MRLResNetForImageClassification,
    MRLViTConfig,
    MRLViTForImageClassification,
)

BERT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)
VIT = dict(image_size=16, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
           intermediate_size=32)
RESNET = dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1, 64, (3, 7), generator=g),
            "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4]),
            "pixel_values": torch.randn(3, 3, 16, 16, generator=g)}


def outputs(name: str, model, x) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        if name.startswith("bert_model"):
            return {"embeddings": model(x["input_ids"], attention_mask=x["attention_mask"]).embeddings}
        if name == "bert_mlm":
            return {"logits": model(x["input_ids"], attention_mask=x["attention_mask"], truncate_dim=8).logits}
        if name.startswith("align"):
            return {"text": model.get_text_features(x["input_ids"], attention_mask=x["attention_mask"]),
                    "image": model.get_image_features(x["pixel_values"])}
        out = model(pixel_values=x["pixel_values"])
        return {"nested_logits": torch.stack(list(out.nested_logits))}


def models():
    torch.manual_seed(0)
    yield "bert_model_mean_projected", MRLBertModel(MRLBertConfig(**BERT, nesting_list=[4, 8, 12], embedding_dim=12))
    yield "bert_model_cls", MRLBertModel(MRLBertConfig(**BERT, nesting_list=[4, 16], pooling="cls"))
    yield "bert_mlm", MRLBertForMaskedLM(MRLBertConfig(**BERT, nesting_list=[4, 8, 16]))
    yield "resnet_classifier_mrl_e", MRLResNetForImageClassification(
        MRLResNetConfig(**RESNET, nesting_list=[4, 8, 16], num_labels=5, efficient=True))
    yield "vit_classifier", MRLViTForImageClassification(MRLViTConfig(**VIT, nesting_list=[4, 8, 16], num_labels=5))
    yield "align_vit", MRLAlignModel(MRLAlignConfig(text_config=BertConfig(**BERT).to_dict(),
                                                    vision_config=ViTConfig(**VIT).to_dict(), nesting_list=[4, 8]))
    yield "align_resnet_cls", MRLAlignModel(MRLAlignConfig(text_config=BertConfig(**BERT).to_dict(),
                                                           vision_config=ResNetConfig(**RESNET).to_dict(),
                                                           nesting_list=[4, 8], text_pooling="cls"))


def main(folder: str) -> None:
    root = Path(folder)
    x = inputs()
    torch.save(x, root / "inputs.pt") if root.exists() else (root.mkdir(parents=True), torch.save(x, root / "inputs.pt"))
    for name, model in models():
        model.eval()
        model.save_pretrained(root / name, remote_code=False)
        torch.save(outputs(name, model, x), root / name / "expected_outputs.pt")
        print(name, sum(p.numel() for p in model.parameters()), "parameters")


if __name__ == "__main__":
    main(sys.argv[1])
