"""The GPU acceptance run: the ``gpu`` tests and the GPU benchmarks, one table at the end (about 5 minutes on one GPU).

    python scripts/gpu_acceptance.py OUT_DIR

Writes into OUT_DIR: ``gpu_tests.log`` / ``gpu_tests.xml`` (pytest -m gpu), ``heads_<dtype>.json`` and
``mlm_<precision>.json`` (benchmarks/bench_heads.py at 8,192 tokens and benchmarks/bench_mlm.py at batch 32 x 128),
their printed tables, and ``acceptance.md``: the machine, each check, its number and its target. Exits 1 when a
test fails or a target is missed, 2 without a CUDA GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_TARGETS = {"time": 1.3, "memory": 1.5}  # fused MRL-E head + loss vs nn.Linear + cross-entropy
MLM_TARGET = 1.05  # MRL-BERT MLM step time vs BertForMaskedLM


def run(cmd: list[str], log: Path, timeout: int) -> int:
    start = time.time()
    with open(log, "w") as handle:
        done = subprocess.run(cmd, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    print(f"{' '.join(cmd[1:3])} ... rc {done.returncode} in {time.time() - start:.0f} s (log: {log.name})", flush=True)
    return done.returncode


def test_counts(xml_file: Path) -> dict[str, int]:
    if not xml_file.is_file():
        return {"passed": 0, "failed": 0, "skipped": 0, "error": 1}
    suite = ET.parse(xml_file).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return {"passed": total - failed - errors - skipped, "failed": failed, "skipped": skipped, "error": errors}


def main() -> int:
    import torch

    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to accept.")
        return 2
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    run([py, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rfEs", f"--junitxml={out / 'gpu_tests.xml'}",
         "-p", "no:cacheprovider"], out / "gpu_tests.log", timeout=400)
    for dtype in ("float32", "bfloat16"):
        run([py, "benchmarks/bench_heads.py", "--device", "cuda", "--tokens", "8192", "--dtype", dtype,
             "--json", str(out / f"heads_{dtype}.json")], out / f"heads_{dtype}.txt", timeout=200)
    for precision, flag in (("fp32", []), ("bf16", ["--bf16"])):
        run([py, "benchmarks/bench_mlm.py", "--device", "cuda", "--batch", "32", "--seq", "128", *flag,
             "--json", str(out / f"mlm_{precision}.json")], out / f"mlm_{precision}.txt", timeout=200)

    counts = test_counts(out / "gpu_tests.xml")
    rows = [("gpu tests (pytest -m gpu)", f"{counts['passed']} passed, {counts['failed']} failed, "
             f"{counts['error']} errors, {counts['skipped']} skipped", "all pass",
             counts["failed"] == counts["error"] == counts["skipped"] == 0 and counts["passed"] > 0)]
    for dtype in ("float32", "bfloat16"):
        result = _load(out / f"heads_{dtype}.json")
        ours = next((r for r in result.get("rows", []) if r["case"].startswith("(c)")), None)
        for what, key in (("time", "time_ratio"), ("memory", "memory_ratio")):
            value = ours[key] if ours else float("nan")
            rows.append((f"head+loss {what}, 8192 tokens, {dtype}", f"{value:.2f}x", f"<= {HEAD_TARGETS[what]}x",
                         value <= HEAD_TARGETS[what]))
    for precision in ("fp32", "bf16"):
        result = _load(out / f"mlm_{precision}.json")
        ours = next((r for r in result.get("rows", []) if r["case"].startswith("(b)")), None)
        value = ours["time_ratio"] if ours else float("nan")
        memory = f", memory {ours['memory_ratio']:.2f}x" if ours else ""
        rows.append((f"MLM step time, batch 32 x 128, {precision}", f"{value:.2f}x{memory}", f"<= {MLM_TARGET}x",
                     value <= MLM_TARGET))
    import transformers

    lines = [f"# GPU acceptance: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"transformers {transformers.__version__}",
             "", "| check | measured | target | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {value} | {target} | {'yes' if ok else 'NO'} |" for name, value, target, ok in rows]
    (out / "acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(ok for *_, ok in rows) else 1


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


if __name__ == "__main__":
    sys.exit(main())
