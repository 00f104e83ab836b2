import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """GPU tests run only when asked for by name (``pytest -m gpu``): a plain run, or ``-m 'not slow'``, deselects
    them instead of reporting them as skipped on a machine without a GPU."""
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
