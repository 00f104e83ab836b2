"""``config.embed_duplicates_once``: a batch of pairs that repeats a text (several queries with one answer) embeds
each distinct text once when asked. Outputs, the loss and a whole training run (parameters and logged losses) equal
those of embedding every row, while the encoder sees fewer rows; off by default."""
import pytest
import torch
from test_cached_loss import assert_same_training, train
from test_trainer_teacher import NESTING, TINY

from mrl_hf.modeling import MRLBertConfig, MRLBertModel, MRLModelForTextEmbedding, MRLTextEmbeddingConfig
from mrl_hf.modeling.text_common import embed_each_text_once


def bert(dedupe=True, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    config = MRLBertConfig(**{**TINY, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout},
                           nesting_list=NESTING, embed_duplicates_once=dedupe)
    return MRLBertModel(config).double()


def generic(dedupe=True, seed=0):
    torch.manual_seed(seed)
    config = MRLTextEmbeddingConfig(backbone_config={"model_type": "bert", **TINY}, nesting_list=NESTING,
                                    embed_duplicates_once=dedupe)
    return MRLModelForTextEmbedding(config).double()


def repeated_rows(n=32, distinct=6, seed=1):
    """Pairs drawn from a few (anchor, positive) texts, so every batch repeats texts on both sides."""
    g = torch.Generator().manual_seed(seed)
    anchors = [torch.randint(5, 60, (6,), generator=g) for _ in range(distinct)]
    positives = [torch.randint(5, 60, (6,), generator=g) for _ in range(distinct)]
    pick = torch.randint(0, distinct, (n, 2), generator=g).tolist()
    return [{"input_ids": anchors[a], "positive_input_ids": positives[p]} for a, p in pick]


def rows_seen(model):
    seen = []
    encoder = model.bert if isinstance(model, MRLBertModel) else model.backbone
    encoder.register_forward_pre_hook(lambda _, args, kwargs: seen.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]), with_kwargs=True)
    return seen


def test_each_distinct_row_is_embedded_once_and_spread_back():
    model = bert().eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 7, 0], [5, 6, 7, 0], [8, 9, 0, 0], [5, 6, 7, 9]])
    mask = (ids != 0).long()
    mask[3] = torch.tensor([1, 1, 1, 1])  # same ids as rows 0 and 2, another mask: a different row
    seen = rows_seen(model)
    pooled, out = embed_each_text_once(model._embed, ids, mask, output_hidden_states=True)
    assert seen == [4]  # rows 0/2 and 1/4 are the same text
    reference, full = model._embed(ids, mask, output_hidden_states=True)
    torch.testing.assert_close(pooled, reference)
    torch.testing.assert_close(out.last_hidden_state, full.last_hidden_state)
    assert len(out.hidden_states) == len(full.hidden_states)
    for a, b in zip(out.hidden_states, full.hidden_states):
        torch.testing.assert_close(a, b)
    token_types = torch.zeros_like(ids)
    token_types[2, 0] = 1  # token_type_ids are part of a row: row 2 is no longer row 0
    seen.clear()
    embed_each_text_once(model._embed, ids, mask, token_type_ids=token_types)
    assert seen == [5]
    seen.clear()
    embed_each_text_once(model._embed, ids, mask, inputs_embeds=None)
    embed_each_text_once(model._embed, ids[:1], mask[:1])
    assert seen == [4, 1]


@pytest.mark.parametrize("make", [bert, generic], ids=["MRLBertModel", "MRLModelForTextEmbedding"])
def test_pair_loss_and_gradients_equal_embedding_every_row(make):
    batch = {k: torch.stack([r[k] for r in repeated_rows(12)]) for k in ("input_ids", "positive_input_ids")}
    results = []
    for dedupe in (True, False):
        model = make(dedupe)
        seen = rows_seen(model)
        out = model(**batch)
        out.loss.backward()
        results.append((out, [p.grad.clone() for p in model.parameters()], sum(seen)))
    (once, grads_once, rows_once), (every, grads_every, rows_every) = results
    assert rows_every == 24 and rows_once < 16  # 12 anchors + 12 positives, drawn from 6 + 6 texts
    torch.testing.assert_close(once.loss, every.loss)
    torch.testing.assert_close(once.per_dim_losses, every.per_dim_losses)
    torch.testing.assert_close(once.embeddings, every.embeddings)
    for a, b in zip(grads_once, grads_every):
        torch.testing.assert_close(a, b)


def test_training_equals_embedding_every_row(tmp_path):
    data = repeated_rows()
    once = train(bert(True), data, tmp_path / "once")
    every = train(bert(False), data, tmp_path / "every")
    assert_same_training(once, every)


def test_with_dropout_copies_share_a_mask_and_the_switch_is_saved(tmp_path):
    assert MRLBertConfig(**TINY).embed_duplicates_once is False  # off unless asked: every row its own dropout mask
    model = bert(True, dropout=0.5).train()
    batch = {k: torch.stack([r[k] for r in repeated_rows(8)]) for k in ("input_ids", "positive_input_ids")}
    out = model(**batch)
    same = (batch["input_ids"][:, None] == batch["input_ids"][None]).all(-1)
    close = torch.isclose(out.embeddings[:, None], out.embeddings[None]).all(-1)
    assert torch.equal(close, same)  # copies: one embedding; distinct texts: different ones
    model.save_pretrained(tmp_path / "saved")
    assert MRLBertModel.from_pretrained(tmp_path / "saved").config.embed_duplicates_once is True
