import json

import pytest
from transformers import AutoConfig

from mrl_hf import MatryoshkaConfig


def test_defaults_follow_the_paper_and_are_written_for_other_tools(tmp_path):
    cfg = MatryoshkaConfig(embedding_dim=768)
    assert cfg.nesting_list == [12, 24, 48, 96, 192, 384, 768]
    cfg.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ["nesting_list", "truncate_dim", "efficient", "relative_importance", "normalize_embeddings"]:
        assert key in saved
    assert saved["matryoshka_dimensions"] == cfg.nesting_list
    assert saved["is_matryoshka"] is True


def test_round_trip_and_override_through_auto_config(tmp_path):
    cfg = MatryoshkaConfig(embedding_dim=32, nesting_list=[4, 8, 32], truncate_dim=8, efficient=True,
                           relative_importance=[1, 2, 3], normalize_embeddings=True)
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, truncate_dim=4)
    assert type(loaded) is MatryoshkaConfig
    assert loaded.nesting_list == [4, 8, 32] and loaded.truncate_dim == 4 and loaded.efficient
    assert loaded.relative_importance == [1.0, 2.0, 3.0] and loaded.normalize_embeddings


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(nesting_list=[]), "nesting_list is empty"),
        (dict(nesting_list=[16, 8, 32]), "not strictly increasing"),
        (dict(nesting_list=[8, 8, 32]), "duplicate"),
        (dict(nesting_list=[0, 32]), "contains 0"),
        (dict(nesting_list=[8, 16]), "ends with 16, but the embedding dim is 32"),
        (dict(truncate_dim=0), r"truncate_dim=0 is out of range; choose a value in 1..32"),
        (dict(truncate_dim=33), r"truncate_dim=33 is out of range"),
        (dict(nesting_list=[16, 32], relative_importance=[1.0]), "relative_importance has 1 entries"),
        (dict(nesting_list=[16, 32], relative_importance=[1.0, -2.0]), "contains -2.0"),
        (dict(nesting_list=[16, 32], relative_importance=[0, 0]), "all zeros"),
    ],
)
def test_invalid_values_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatryoshkaConfig(embedding_dim=32, **kwargs)


def test_derived_keys_follow_nesting_list_when_loaded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "matryoshka", "embedding_dim": 16, "nesting_list": [4, 16], "matryoshka_dimensions": [1, 2]}))
    assert AutoConfig.from_pretrained(tmp_path).matryoshka_dimensions == [4, 16]


def test_a_config_with_only_matryoshka_dimensions_keeps_those_sizes(tmp_path):
    """A vLLM / Jina-style checkpoint lists its sizes as matryoshka_dimensions alone: they become nesting_list
    (not the halving list, which the next save would have written over them)."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "matryoshka", "embedding_dim": 48, "matryoshka_dimensions": [16, 40, 48]}))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.nesting_list == [16, 40, 48] and config.matryoshka_dimensions == [16, 40, 48]
    assert MatryoshkaConfig(embedding_dim=48).nesting_list == [12, 24, 48]
