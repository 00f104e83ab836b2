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
