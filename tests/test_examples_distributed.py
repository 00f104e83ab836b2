"""The examples run unchanged under `accelerate launch` with the shipped 2-process CPU config (gloo DDP)."""
import os
import subprocess
import sys
import textwrap

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


def test_is_main_process_reads_the_process_group_under_spawn(tmp_path):
    """torch.multiprocessing.spawn sets no RANK: the initialised group's rank decides."""
    script = tmp_path / "spawned.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        import torch.distributed as dist
        import torch.multiprocessing as mp
        from mrl_hf.distributed import end_distributed_run, is_main_process

        def run(rank):
            dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=rank, world_size=2)
            with open(os.path.join({str(tmp_path)!r}, f"rank{{rank}}"), "w") as f:
                f.write(str(is_main_process()))
            end_distributed_run()

        if __name__ == "__main__":
            os.environ.pop("RANK", None)
            mp.spawn(run, nprocs=2)
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rank0").read_text() == "True" and (tmp_path / "rank1").read_text() == "False"


def test_end_distributed_run_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from mrl_hf.distributed import end_distributed_run

    end_distributed_run()  # a plain run: nothing to tear down
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_distributed_run()
    assert not dist.is_initialized()
