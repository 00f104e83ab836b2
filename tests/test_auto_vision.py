"""MRLModelForImageClassification / MRLModelForImageEmbedding on five AutoModel vision families (tiny random configs).

For each family a plain transformers model is saved and loaded into the Matryoshka model; its pooled features are
compared with the plain model's ``last_hidden_state`` pooled by the reference code below (written independently of
``mrl_hf.modeling.auto_vision.pool_image``), and the nested cross-entropy with one computed here from the head's weights.
"""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    BertConfig,
    TrainingArguments,
)

from mrl_hf.modeling.auto_vision import (
    MRLImageConfig,
    MRLModelForImageClassification,
    MRLModelForImageEmbedding,
)
from mrl_hf.trainer import MRLTrainer

FAMILIES = {  # model_type: tiny config (3 channels, 16 x 16 images)
    "vit": dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64),
    "dinov2": dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   mlp_ratio=2),
    "convnext": dict(hidden_sizes=[8, 32], depths=[1, 1], num_stages=2, patch_size=2),
    "resnet": dict(embedding_size=8, hidden_sizes=[8, 32], depths=[1, 1], layer_type="basic"),
    "swin": dict(image_size=16, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4),
}
NUM_LABELS = 5


def tiny_config(family):
    return AutoConfig.for_model(family, num_channels=3, **FAMILIES[family])


@pytest.fixture(scope="module")
def plain_checkpoint(tmp_path_factory):
    """``plain_checkpoint(family, head=False)`` -> (folder, model): a plain transformers model with random weights (its
    base model, or with ``head`` its ``...ForImageClassification`` with 3 named classes), saved once per module."""

    @functools.cache
    def build(family, head=False):
        torch.manual_seed(0)
        if head:
            config = tiny_config(family)
            config.id2label = {0: "cat", 1: "dog", 2: "bird"}
            config.label2id = {v: k for k, v in config.id2label.items()}
            model = AutoModelForImageClassification.from_config(config)
        else:
            model = AutoModel.from_config(tiny_config(family))
        folder = tmp_path_factory.mktemp(f"{family}-{'head' if head else 'base'}")
        model.save_pretrained(folder)
        return folder, model.eval()

    return build


def images(n=4, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def reference_features(family, plain, x):
    """The feature each family's own classifier reads, pooled here from ``last_hidden_state``."""
    with torch.no_grad():
        hidden = plain(pixel_values=x).last_hidden_state
    if family in ("vit", "dinov2"):  # [CLS] after the final layer norm
        return hidden[:, 0]
    if family == "swin":  # mean over the (layer-normed) tokens
        return hidden.mean(1)
    spatial = hidden.flatten(2).mean(-1)  # (batch, channels, h, w) -> spatial mean
    if family == "convnext":
        norm = plain.layernorm
        return F.layer_norm(spatial, spatial.shape[-1:], norm.weight, norm.bias, norm.eps)
    return spatial


def assert_same_backbone_weights(plain, model):
    ours = dict(model.backbone.named_parameters())
    theirs = {k: v for k, v in plain.named_parameters() if not k.startswith("pooler.")}
    assert ours.keys() == theirs.keys()
    for name, param in theirs.items():
        assert torch.equal(param, ours[name]), name


def assert_finite_parameters(model):
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name


def reference_nested_ce(embeddings, head, labels, nesting, weights, eps=0.0, denominator=None):
    """sum_m c_m * CE_m with CE_m = (sum over labelled rows of the smoothed CE) / denominator."""
    keep = labels != -100
    per_dim = []
    for i, m in enumerate(nesting):
        if head.efficient:
            w, b = head.weight[:, :m], head.bias
        else:
            w, b = head.classifiers[i].weight, head.classifiers[i].bias
        logp = torch.log_softmax(embeddings[keep, :m] @ w.T + b, -1)
        rows = -(1 - eps) * logp.gather(1, labels[keep, None]).squeeze(1) - eps * logp.mean(-1)
        per_dim.append(rows.sum() / (denominator if denominator is not None else keep.sum()))
    return sum(c * v for c, v in zip(weights, per_dim)), torch.stack(per_dim)


# ---- config -------------------------------------------------------------------------------------------------------

def test_config_defaults_validation_and_registration(tmp_path):
    cfg = MRLImageConfig(backbone_config=tiny_config("convnext"), num_labels=3)
    assert cfg.model_type == "mrl_image" and cfg.pooling == "auto" and cfg.nesting_list == [8, 16, 32]
    assert MRLImageConfig(backbone_config=tiny_config("vit"), embedding_dim=24).nesting_list == [12, 24]
    assert type(MRLImageConfig().backbone_config).__name__ == "ViTConfig"  # the default backbone
    cfg.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MRLImageConfig and type(loaded.backbone_config).__name__ == "ConvNextConfig"
    assert loaded.backbone_config.hidden_sizes == [8, 32] and loaded.num_labels == 3
    assert isinstance(AutoModel.from_config(cfg), MRLModelForImageEmbedding)
    assert isinstance(AutoModelForImageClassification.from_config(cfg), MRLModelForImageClassification)
    vit = tiny_config("vit")
    for bad, match in [(dict(pooling="max"), "pooling='max'"), (dict(nesting_list=[8, 16]), "ends with 16"),
                       (dict(embedding_dim=0), "embedding_dim=0"), (dict(truncate_dim=33), "truncate_dim=33")]:
        with pytest.raises(ValueError, match=match):
            MRLImageConfig(backbone_config=vit, **bad)
    with pytest.raises(ValueError, match="model_type"):
        MRLImageConfig(backbone_config={"hidden_size": 32})
    text = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="not a vision model"):
        MRLModelForImageEmbedding(MRLImageConfig(backbone_config=text))
    with pytest.raises(ValueError, match="pooling='cls', but the ResNetModel backbone has no"):
        MRLModelForImageEmbedding(MRLImageConfig(backbone_config=tiny_config("resnet"), pooling="cls"))
    with pytest.raises(ValueError, match=r"truncate_dim=12 has no classifier in this MRL head; choose one of \[8, "):
        MRLModelForImageClassification(MRLImageConfig(backbone_config=vit, truncate_dim=12))
    with pytest.raises(ValueError, match=r"precisions=\['binary'\]: .*a classifier is trained on its logits only"):
        MRLModelForImageClassification(MRLImageConfig(backbone_config=vit, precisions=["binary"]))


# ---- plain checkpoints of five families -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_checkpoint_loads_quietly_and_pools_like_the_family(family, plain_checkpoint):
    folder, plain = plain_checkpoint(family)
    efficient = family in ("vit", "resnet")  # MRL-E on two families, MRL on the others
    model, info = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, efficient=efficient,
                                                                 output_loading_info=True)
    head_keys = {"head.weight", "head.bias"} if efficient else \
        {f"head.classifiers.{i}.{w}" for i in range(len(model.config.nesting_list)) for w in ("weight", "bias")}
    assert set(info["missing_keys"]) == head_keys  # only the new head is initialised
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model.backbone) is type(plain) and model.config.num_labels == NUM_LABELS
    assert_same_backbone_weights(plain, model)
    assert_finite_parameters(model)
    if efficient:  # MRL-E's shared weight gets what a fresh nn.Linear gets (not zeros, not uninitialised memory)
        bound = 1 / model.config.nesting_list[-1] ** 0.5
        assert 0 < model.head.weight.abs().max() <= bound and model.head.weight.std() > bound / 4
    x = images()
    model.eval()
    with torch.no_grad():
        out = model(pixel_values=x)
    torch.testing.assert_close(out.embeddings, reference_features(family, plain, x), atol=1e-6, rtol=0)
    assert out.logits.shape == (4, NUM_LABELS) and len(out.nested_logits) == len(model.config.nesting_list)

    embedder = MRLModelForImageEmbedding.from_pretrained(folder, embedding_dim=16)
    assert embedder.config.nesting_list == [8, 16] and embedder(x).embeddings.shape == (4, 16)
    with torch.no_grad():
        torch.testing.assert_close(embedder(x).embeddings, embedder.projection(reference_features(family, plain, x)),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_classifier_checkpoint_loads_its_base_model_and_labels(family, plain_checkpoint, tmp_path):
    folder, plain = plain_checkpoint(family, head=True)
    model, info = MRLModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not info["unexpected_keys"]  # the plain classifier is dropped quietly
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"} and model.head.num_classes == 3
    assert_same_backbone_weights(plain.base_model, model)
    model.save_pretrained(tmp_path)
    assert all(k.startswith(("backbone.", "head.")) for k in load_file(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_save_load_round_trip_is_bit_exact(family, plain_checkpoint, tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, embedding_dim=24,
                                                           nesting_list=[6, 12, 24], efficient=family == "swin",
                                                           truncate_dim=12)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(loaded) is MRLModelForImageClassification
    assert type(loaded.config.backbone_config) is type(model.config.backbone_config)
    assert (loaded.config.nesting_list, loaded.config.truncate_dim, loaded.config.efficient) == \
        ([6, 12, 24], 12, family == "swin")
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert {k for k in saved if not k.startswith("backbone.")} == \
        {k for k in model.state_dict() if not k.startswith("backbone.")}  # projection and head under their names
    x = images()
    model.eval(), loaded.eval()
    with torch.no_grad():
        ours, theirs = model(x), loaded(x)
        assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.embeddings, theirs.embeddings)
        # the classifier's checkpoint is also an embedding model (AutoModel), its head left out quietly
        embedder, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
        assert type(embedder) is MRLModelForImageEmbedding and not any(info.values()), info
        assert torch.equal(embedder.eval()(x).embeddings, ours.embeddings)


# ---- the loss and truncation ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("efficient", [False, True])
def test_nested_cross_entropy_equals_an_independent_computation(efficient, plain_checkpoint):
    folder, _ = plain_checkpoint("dinov2")
    model = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, efficient=efficient,
                                                           relative_importance=[1.0, 0.5, 2.0]).eval()
    x, labels = images(6), torch.tensor([0, 4, -100, 2, 3, 1])
    out = model(x, labels=labels, smoothing=0.1, num_items_in_batch=torch.tensor(8))
    expected, per_dim = reference_nested_ce(out.embeddings, model.head, labels, [8, 16, 32], [1.0, 0.5, 2.0],
                                            eps=0.1, denominator=8)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.per_dim_losses, per_dim.detach())
    plain = model(x, labels=labels)  # no smoothing, divided by the 5 labelled images
    torch.testing.assert_close(plain.loss, reference_nested_ce(out.embeddings, model.head, labels, [8, 16, 32],
                                                               [1.0, 0.5, 2.0])[0])
    plain.loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_truncate_dim_gives_logits_and_features_at_that_size(plain_checkpoint):
    folder, _ = plain_checkpoint("swin")
    mrl = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, nesting_list=[4, 8, 32]).eval()
    mrl_e = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, nesting_list=[4, 8, 32],
                                                           efficient=True).eval()
    x = images()
    with torch.no_grad():
        out = mrl(x)
        assert torch.equal(out.logits, out.nested_logits[-1])
        assert torch.equal(mrl(x, truncate_dim=8).logits, out.nested_logits[1])
        assert torch.equal(mrl.logits_at(x, 4), out.nested_logits[0])
        with pytest.raises(ValueError, match=r"truncate_dim=6 has no classifier in this MRL head"):
            mrl(x, truncate_dim=6)
        emb = mrl_e(x).embeddings
        head = mrl_e.head
        torch.testing.assert_close(mrl_e(x, truncate_dim=6).logits, emb[:, :6] @ head.weight[:, :6].T + head.bias)
        with pytest.raises(ValueError, match=r"truncate_dim=33 is out of range; choose a value in 1..32"):
            mrl_e(x, truncate_dim=33)
        features = mrl.get_image_features(x, truncate_dim=8, normalize=True)
        torch.testing.assert_close(features, F.normalize(out.embeddings[:, :8], dim=-1))

    embedder = MRLModelForImageEmbedding.from_pretrained(folder, truncate_dim=8, normalize_embeddings=True).eval()
    with torch.no_grad():
        emb_out = embedder(x)
        torch.testing.assert_close(emb_out.truncated_embeddings, F.normalize(emb_out.embeddings[:, :8], dim=-1))
        assert not torch.allclose(emb_out.truncated_embeddings, F.normalize(emb_out.embeddings, dim=-1)[:, :8])
        assert torch.equal(embedder(x, truncate_dim=16, normalize=False).truncated_embeddings,
                           emb_out.embeddings[:, :16])


def test_pooling_modes(plain_checkpoint):
    x = images()
    folder, vit = plain_checkpoint("vit")
    with torch.no_grad():
        plain_out = vit(pixel_values=x)
        hidden, pooler = plain_out.last_hidden_state, plain_out.pooler_output
        with_pooler, info = MRLModelForImageEmbedding.from_pretrained(folder, pooling="pooler",
                                                                      output_loading_info=True)
        assert not any(info.values())  # ViT's pooling layer is built and loaded for pooling="pooler" only
        torch.testing.assert_close(with_pooler.eval()(x).embeddings, pooler, atol=1e-6, rtol=0)
        mean = MRLModelForImageEmbedding.from_pretrained(folder, pooling="mean").eval()
        assert not hasattr(mean.backbone, "pooler") or mean.backbone.pooler is None
        torch.testing.assert_close(mean(x).embeddings, hidden[:, 1:].mean(1), atol=1e-6, rtol=0)  # without [CLS]
        folder, resnet = plain_checkpoint("resnet")
        resnet_mean = MRLModelForImageEmbedding.from_pretrained(folder, pooling="mean").eval()
        torch.testing.assert_close(resnet_mean(x).embeddings, resnet(pixel_values=x).pooler_output.flatten(1),
                                   atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="pooling='cls', but the SwinModel backbone has no"):
        MRLModelForImageEmbedding.from_pretrained(plain_checkpoint("swin")[0], pooling="cls")


# ---- training -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_mrl_trainer_updates_the_model_and_logs_every_nesting_size(family, plain_checkpoint, tmp_path):
    folder, _ = plain_checkpoint(family)
    model = MRLModelForImageClassification.from_pretrained(folder, num_labels=NUM_LABELS, embedding_dim=16,
                                                           efficient=family == "convnext")
    assert model.config.nesting_list == [8, 16]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = images(24, seed=1)
    data = [{"pixel_values": x[i], "labels": i % NUM_LABELS} for i in range(24)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, learning_rate=1e-3,
                             max_steps=3, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                             save_strategy="no", label_smoothing_factor=0.1 if family == "vit" else 0.0)
    trainer = MRLTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        dims = [h["loss_dim_8"], h["loss_dim_16"]]
        assert all(np.isfinite(dims)) and h["loss"] == pytest.approx(sum(dims), rel=0.01)
    assert_finite_parameters(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert {"projection.weight", "projection.bias"} <= changed and any(n.startswith("head.") for n in changed)
    assert any(name.startswith("backbone.") for name in changed)
    pred = trainer.predict(data)  # predictions are (logits, nested_logits): the config skips the rest
    logits, nested = pred.predictions
    assert logits.shape == (24, NUM_LABELS) and len(nested) == 2 and {"test_loss_dim_8", "test_loss_dim_16"} <= \
        set(pred.metrics)


# ---- bad input ------------------------------------------------------------------------------------------------------

def test_bad_input_raises_clear_errors(plain_checkpoint):
    model = MRLModelForImageClassification.from_pretrained(plain_checkpoint("resnet")[0], num_labels=NUM_LABELS)
    good = images(2)
    with pytest.raises(ValueError, match="has 1 channels, but the backbone's num_channels is 3"):
        model(pixel_values=torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"expected \(batch, 3, height, width\)"):
        model(pixel_values=torch.randn(2, 16, 16))
    with pytest.raises(ValueError, match=r"label 5 is outside 0..4 \(config.num_labels=5\)"):
        model(pixel_values=good, labels=torch.tensor([0, 5]))
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        model(pixel_values=good, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="truncate_dim=33 is out of range"):
        model.get_image_features(good, truncate_dim=33)
    with pytest.raises(ValueError, match="pixel_values is required"):
        model(labels=torch.tensor([0, 1]))


def test_auto_pooling_reads_the_pooler_the_family_classifier_reads(tmp_path):
    """BEiT's classifier reads its pooling layer (a layer norm of the patch mean): pooling='auto' builds and reads it
    too, with the checkpoint's weights (it used to take the raw [CLS] token, 2.8 apart)."""
    from transformers import BeitForImageClassification

    from mrl_hf.modeling import MRLModelForImageEmbedding

    config = AutoConfig.for_model("beit", image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32, use_mean_pooling=True, num_labels=3)
    torch.manual_seed(0)
    classifier = BeitForImageClassification(config).eval()
    with torch.no_grad():
        classifier.beit.pooler.layernorm.weight.normal_()  # a trained norm, not the identity it starts as
    classifier.save_pretrained(tmp_path)
    model = MRLModelForImageEmbedding.from_pretrained(tmp_path, nesting_list=[4, 8, 16]).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).embeddings, classifier.beit(pixels).pooler_output)
    # an mrl_hf checkpoint saved before the pooler was read (no pooler weights, pooling 'auto') loads as it was
    # trained, on the [CLS] token, instead of through a freshly initialised pooler (cosine 0.35 to its embeddings)
    import json

    earlier = MRLModelForImageEmbedding(MRLImageConfig(backbone_config=config, nesting_list=[4, 8, 16],
                                                       pooling="cls")).eval()
    assert earlier.backbone.pooler is None
    earlier.save_pretrained(tmp_path / "earlier")
    saved = json.loads((tmp_path / "earlier" / "config.json").read_text())
    (tmp_path / "earlier" / "config.json").write_text(json.dumps({**saved, "pooling": "auto"}))
    loaded = MRLModelForImageEmbedding.from_pretrained(tmp_path / "earlier").eval()
    assert loaded.config.pooling == "cls" and loaded.backbone.pooler is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).embeddings, earlier(pixel_values=pixels).embeddings)
    loaded.save_pretrained(tmp_path / "again")  # the pooling is written out now
    assert json.loads((tmp_path / "again" / "config.json").read_text())["pooling"] == "cls"


@pytest.mark.parametrize("family, settings, width", [
    # MobileViT's last 1x1 convolution is wider than its last stage (hidden_sizes[-1] = 24 was read: refused)
    ("mobilevit", dict(image_size=32, hidden_sizes=[8, 16, 24], neck_hidden_sizes=[8, 8, 8, 8, 16, 16, 40],
                       num_attention_heads=2), 40),
    # EfficientNet's top convolution: 1280 channels times width_coefficient, which hidden_dim states
    ("efficientnet", dict(image_size=32, hidden_dim=128, width_coefficient=0.1, depth_coefficient=0.1), 128),
    ("cvt", dict(embed_dim=[8, 16, 24], num_heads=[1, 2, 2], depth=[1, 2, 3]), 24),  # (transformers needs depth > i)
])
def test_families_that_state_their_width_under_other_names(family, settings, width):
    from transformers import AutoConfig

    model = MRLModelForImageClassification(MRLImageConfig(backbone_config=AutoConfig.for_model(family, **settings),
                                                          num_labels=3)).eval()
    assert model.config.backbone_width == width
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)


def test_a_family_without_a_width_is_refused_by_name():
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="'mobilenet_v1' backbone from its config.*not supported yet"):
        MRLImageConfig(backbone_config=AutoConfig.for_model("mobilenet_v1"), num_labels=3)


def test_vit_mae_encodes_every_patch_and_clip_mean_pooling_skips_its_class_token(tmp_path):
    from transformers import AutoConfig, ViTMAEConfig, ViTMAEModel

    from mrl_hf.modeling.auto_vision import MRLModelForImageEmbedding

    mae_config = ViTMAEConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32)
    ViTMAEModel(mae_config).save_pretrained(tmp_path / "mae")
    MRLModelForImageEmbedding(MRLImageConfig(backbone_config=mae_config))
    assert mae_config.mask_ratio == 0.75  # the caller's config still pre-trains with its mask
    mae = MRLModelForImageClassification.from_pretrained(tmp_path / "mae", num_labels=3, nesting_list=[4, 8, 16])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # MAE's pre-training mask (75% of the patches at random, every call) is off
        first, second = mae.eval()(pixel_values=x).logits, mae(pixel_values=x).logits
        assert mae.backbone(pixel_values=x).last_hidden_state.shape[1] == 1 + 16
    torch.testing.assert_close(first, second, atol=1e-6, rtol=0)  # the patch order still varies: rounding only
    clip = AutoConfig.for_model("clip_vision_model", image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32)
    model = MRLModelForImageEmbedding(MRLImageConfig(backbone_config=clip, pooling="mean")).eval()
    with torch.no_grad():
        hidden = model.backbone(pixel_values=x).last_hidden_state
        torch.testing.assert_close(model(pixel_values=x).embeddings, hidden[:, 1:].mean(1))
    MRLModelForImageEmbedding(MRLImageConfig(backbone_config=clip, pooling="cls"))  # CLIP has a class token
