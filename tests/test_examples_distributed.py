"""The examples run unchanged under `accelerate launch` with the shipped 2-process CPU config (gloo DDP)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="needs Fashion-MNIST: bash scripts/test.sh installs it")
def test_train_vision_under_accelerate_launch_trains_with_two_processes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "info"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "ddp_cpu.yaml"),
           "--main_process_port", str(29600 + os.getpid() % 1000),
           os.path.join(ROOT, "examples", "train_vision.py"), "--arch", "resnet", "--train-size", "512",
           "--test-size", "256", "--epochs", "1", "--no-ff", "--output-dir", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # per-device batch 128 on 2 processes: the Trainer reports the global batch of a real DDP run
    assert log.count("Total train batch size (w. parallel, distributed & accumulation) = 256") == 3, log[-4000:]
    assert (tmp_path / "resnet_results.csv").exists() and (tmp_path / "resnet_1nn.png").exists()
    assert log.count("resnet MRL adaptive") == 1  # only the main process writes and prints the results


def test_is_main_process_follows_the_launchers_rank(monkeypatch):
    from mrl_hf.distributed import is_main_process

    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()  # a plain `python script.py`
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()


def test_end_distributed_run_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from mrl_hf.distributed import end_distributed_run

    end_distributed_run()  # a plain run: nothing to tear down
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_distributed_run()
    assert not dist.is_initialized()
