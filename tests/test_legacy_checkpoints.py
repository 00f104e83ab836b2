"""Checkpoints saved by an earlier mrl_hf (commit ac7f4eb, before the modeling code was reshaped for any backbone) load
with today's classes and give the same outputs. The fixtures were written by ``scripts/make_legacy_checkpoints.py``."""
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForMaskedLM

import mrl_hf  # noqa: F401  (registers the Auto classes)
from mrl_hf.modeling import (
    MRLAlignModel,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLResNetForImageClassification,
    MRLViTForImageClassification,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from make_legacy_checkpoints import outputs  # noqa: E402  (the same forward calls that wrote the expected outputs)

ROOT = Path(__file__).parent / "fixtures" / "legacy_checkpoints"

CASES = {
    "bert_model_mean_projected": (MRLBertModel, AutoModel),
    "bert_model_cls": (MRLBertModel, AutoModel),
    "bert_mlm": (MRLBertForMaskedLM, AutoModelForMaskedLM),
    "resnet_classifier_mrl_e": (MRLResNetForImageClassification, AutoModelForImageClassification),
    "vit_classifier": (MRLViTForImageClassification, AutoModelForImageClassification),
    "align_vit": (MRLAlignModel, AutoModel),
    "align_resnet_cls": (MRLAlignModel, AutoModel),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("through_auto", [False, True], ids=["class", "auto"])
def test_legacy_checkpoint_loads_unchanged(name, through_auto):
    cls, auto = CASES[name]
    loader = auto if through_auto else cls
    model, info = loader.from_pretrained(ROOT / name, output_loading_info=True)
    assert type(model) is cls
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = torch.load(ROOT / "inputs.pt")
    expected = torch.load(ROOT / name / "expected_outputs.pt")
    got = outputs(name, model.eval(), x)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
