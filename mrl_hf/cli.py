"""The `mrl-hf` command: demo, train, evaluate, export, push, inspect."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

DEFAULT_DEMO_DIR = "outputs/mrl-minilm-chatterbot"
OFF = "off"  # --rotation-lr off / --freeze-bottom off: that piece of --keep-original is not used


def _epochs(args: argparse.Namespace, default: float) -> float:
    """``--epochs``: the default when not given; a number > 0 otherwise (0 is not read as 'the default')."""
    if args.epochs is None:
        return default
    if not (args.epochs > 0 and math.isfinite(args.epochs)):
        raise ValueError(f"--epochs {args.epochs:g} must be a finite number > 0.")
    return args.epochs


def _digits_demo(args: argparse.Namespace) -> int:
    from . import demo_digits

    epochs = _epochs(args, 300)
    if epochs != int(epochs):
        raise ValueError(f"--epochs {epochs:g}: the digits demo runs whole full-batch steps; give a whole number.")
    start = time.time()
    rows = demo_digits.run(epochs=int(epochs), seed=args.seed)
    print("\nTop-1 accuracy (%) on held-out digits at each embedding size (first m features):")
    print(demo_digits.format_table(rows))
    print(f"\nMRL keeps accuracy at small sizes; the full-dim model, sliced, does not. ({time.time() - start:.0f} s)")
    return 0


def _refuse_ignored_flags(args: argparse.Namespace, command: str, kept=("epochs", "seed")) -> None:
    """The digits demo saves nothing and takes no model: a flag it would ignore is refused."""
    ignored = [action.option_strings[0] for action in args.parser._actions if action.option_strings
               and action.dest not in ("help", "digits", *kept) and getattr(args, action.dest) != action.default]
    if ignored:
        raise ValueError(f"{command} runs the small digits demo and saves nothing: it takes --epochs and --seed only, "
                         f"not {ignored}.")


def _demo(args: argparse.Namespace) -> int:
    if args.digits:
        _refuse_ignored_flags(args, "demo --digits")
        return _digits_demo(args)
    from . import demo_text

    _check_before_training(args.model, args.output_dir)
    result = demo_text.run(output_dir=args.output_dir, model_path=args.model, epochs=_epochs(args, 1.0),
                           seed=args.seed)
    table, adaptive = result["table"], result["adaptive"]
    print("\nHeld-out question -> answer retrieval (%) with embeddings cut to each size:")
    print(demo_text.format_comparison(table))
    print(f"\nSaved to {result['output_dir']}: model.safetensors, config.json (nesting_list, "
          f"truncate_dim={result['default_dim']}), tokenizer, README.md (model card), mrl_accuracy_vs_dim.png")
    print(f"Reloaded: encode() gives {adaptive['reloaded_shape']} (the saved default size).")
    print(f"Adaptive retrieval (shortlist {adaptive['shortlist_k']} at {adaptive['shortlist_dim']} dims, re-rank at "
          f"full size): hit@1 {adaptive['adaptive_hit@1']:.1f} vs {adaptive['full_hit@1']:.1f} for "
          f"full-size search, {adaptive['adaptive_mflops']:.3f} vs {adaptive['full_mflops']:.3f} MFLOPs per query.")
    print(f"({result['seconds']:.0f} s)")
    return 0


def _keep_original(args: argparse.Namespace, model_path: str) -> dict:
    """The teacher / rotation / frozen-bottom settings: --keep-original's (on by default for a sentence-transformers
    model, where docs/finetune.md measured it), each overridden by its own flag."""
    from . import recipes

    keep = args.keep_original
    if keep is None:
        keep = recipes.is_sentence_transformers_model(model_path)
    chosen = dict(recipes.KEEP_ORIGINAL) if keep else {"teacher_weight": 0.0, "rotation_learning_rate": None,
                                                      "freeze_bottom": None}
    given = {"teacher_weight": args.teacher_weight, "rotation_learning_rate": args.rotation_lr,
             "freeze_bottom": args.freeze_bottom}
    chosen.update({k: None if v is OFF else v for k, v in given.items() if v is not None})
    if args.keep_original is not None:
        why = "--keep-original" if keep else "--no-keep-original"
    else:
        why = ("a sentence-transformers model; --no-keep-original turns it off" if keep
               else "not a sentence-transformers model; --keep-original turns it on")
    rotation, frozen = chosen["rotation_learning_rate"], chosen["freeze_bottom"]
    print(f"keep-original {'on' if keep else 'off'} ({why}): teacher weight {chosen['teacher_weight']:g}, rotation "
          f"lr {'off' if rotation is None else f'{rotation:g}'}, frozen bottom blocks "
          f"{'none' if frozen is None else frozen}")
    return chosen


def _check_before_training(model_path: str | None, output_dir: str, mean_centering: bool = False) -> None:
    """What would otherwise fail only after the training: a missing local --model, an --output-dir that is a file,
    --mean-centering on a model that already has an adaptor. ``model_path=None``: the packaged model, nothing to
    check."""
    from .saving import missing_checkpoint_error

    if Path(output_dir).is_file():
        raise ValueError(f"--output-dir {output_dir} is a file; choose a folder path.")
    if model_path is None:
        return
    missing = missing_checkpoint_error(model_path)
    if missing is not None:
        raise missing
    config = Path(model_path) / "config.json"
    if mean_centering and config.is_file() and json.loads(config.read_text()).get("adaptor"):
        raise ValueError(f"--mean-centering attaches an adaptor, but {model_path} already has one; train from the "
                         "checkpoint the adaptor was attached to, or leave --mean-centering out.")


def _or_off(kind):
    """An argparse type: ``kind(text)``, or ``OFF`` for 'off' (a piece of --keep-original turned off)."""
    def parse(text: str):
        return OFF if text.strip().lower() == "off" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _train(args: argparse.Namespace) -> int:
    if args.recipe == "digits":
        _refuse_ignored_flags(args, "train digits")
        return _digits_demo(args)
    from . import recipes
    from .data.text import load_chatterbot_pairs
    from .hub import save_for_hub
    from .nesting import validate_nesting_list

    model_path = args.model or recipes.packaged_minilm()
    _check_before_training(model_path, args.output_dir, args.mean_centering)
    nesting = validate_nesting_list(_int_list(args.nesting_list, "--nesting-list")) if args.nesting_list else None
    train, test = recipes.split_pairs(load_chatterbot_pairs(), seed=args.split_seed)
    nesting = nesting or recipes.checkpoint_nesting_list(model_path)
    precisions = _precisions(args.precisions, args.precision_sizes, nesting)
    if precisions is None and (args.quantization_weight is not None or args.binary_surrogate is not None):
        raise ValueError("--quantization-weight and --binary-surrogate set the code terms of --precisions; name the "
                         "codes too (e.g. --precisions binary), or --precisions float32 for float-only training")
    keep = _keep_original(args, model_path)
    model, _ = recipes.finetune(model_path, train, nesting, epochs=_epochs(args, 1.0), batch_size=args.batch_size,
                                lr=args.lr, seed=args.seed, mini_batch_size=args.mini_batch_size,
                                embed_duplicates_once=args.embed_duplicates_once, **keep,
                                precisions=precisions, quantization_weight=_or(args.quantization_weight, 1.0),
                                binary_surrogate=_or(args.binary_surrogate, "ste"))
    if args.mean_centering:
        import numpy as np

        from .adaptor import attach_adaptor, mean_centering, task_kwargs

        full = model.config.matryoshka_embedding_dim
        if task_kwargs(model, "query"):  # a model with prompts: each text as it will be served
            anchors, positives = (sorted({pair[side] for pair in train}) for side in ("anchor", "positive"))
            vectors = np.concatenate([
                model.encode(anchors, truncate_dim=full, normalize=False, task="query"),
                model.encode(positives, truncate_dim=full, normalize=False, task="document")])
        else:
            texts = sorted({text for pair in train for text in (pair["anchor"], pair["positive"])})
            vectors = model.encode(texts, truncate_dim=full, normalize=False)
        attach_adaptor(model, mean_centering(vectors, nesting))
    embedded = recipes.embed_test_pairs(model, test)  # once, for the float table and the codes
    table = recipes.results_table({"MRL fine-tuned": recipes.evaluate(model, test, nesting, embedded=embedded)})
    trained = model.config.matryoshka_precisions or {}
    codes = [p for p in trained if p != "float32"]
    if codes:  # the held-out set as the codes the model was trained for, at every size, no rescoring
        scores = recipes.evaluate_codes(model, test, nesting, ["float32", *codes], embedded=embedded)
        table = table + recipes.results_table({f"MRL fine-tuned, {p} codes": scores[p] for p in codes})
    out = save_for_hub(model, args.output_dir, results=table,
                       eval_dataset={"name": "chatterbot-corpus (held-out questions)", "type": "chatterbot-corpus"},
                       datasets=["chatterbot-corpus"])
    print(table.to_markdown("hit@1"))
    if codes:
        from .quantization import format_precision_table

        print("\nAs codes (hit@10 / MRR %, binary: Hamming distance, no rescoring):")
        print(format_precision_table(scores))
    if model.config.binary_surrogate == "ste-centred" and not args.mean_centering and "binary" in trained:
        print("\nNote: the binary codes were trained centred (ste-centred) but the saved model is not; pass "
              "--mean-centering, or attach mrl_hf.adaptor.mean_centering fitted on your corpus.")
    print(f"\nSaved to {out}")
    return 0


def _precisions(names: str | None, sizes: str | None, nesting: list[int]):
    """``--precisions binary,int8 [--precision-sizes 12,24]`` -> the ``precisions=`` setting of the config (float32
    at every size, the named codes at every size or at the listed ones), or None (float only)."""
    if names is None:
        if sizes is not None:
            raise ValueError("--precision-sizes needs --precisions (e.g. --precisions binary --precision-sizes 12,24)")
        return None
    codes = [name.strip() for name in names.split(",") if name.strip() and name.strip() != "float32"]
    if not sizes:
        return ["float32", *codes]
    if not codes:
        raise ValueError(f"--precision-sizes {sizes} lists sizes for codes, but --precisions {names} names none; "
                         "name them, e.g. --precisions binary")
    try:
        listed = [int(m) for m in sizes.split(",")]
    except ValueError:
        raise ValueError(f"--precision-sizes {sizes!r} must be comma-separated sizes of the nesting list, e.g. "
                         f"{','.join(map(str, nesting[:2]))}") from None
    return {"float32": nesting, **{name: listed for name in codes}}


def _or(value, default):
    return default if value is None else value


def _evaluate(args: argparse.Namespace) -> int:
    from . import recipes
    from .nesting import validate_dim

    if args.mteb:
        given = [flag for flag, value in (("--precisions", args.precisions), ("--pairs", args.pairs),
                                          ("--baseline", args.baseline)) if value]
        if given:
            raise ValueError(f"{given} score --pairs (or the chatterbot split), not --mteb's tasks; run them "
                             "separately (mrl-hf evaluate MODEL --mteb TASKS, one model at a time)")
        return _evaluate_mteb(args)
    if args.pairs:
        test = _read_pairs(args.pairs)
    else:
        from .data.text import load_chatterbot_pairs

        test = recipes.split_pairs(load_chatterbot_pairs(), seed=args.seed)[1]
    models = {args.model: _text_model_class(args.model).from_pretrained(args.model).eval()}
    if args.baseline:
        models[f"{args.baseline} (sliced)"] = _text_model_class(args.baseline).from_pretrained(args.baseline).eval()
    first = next(iter(models.values()))
    dims = _int_list(args.dims, "--dims") if args.dims else list(first.config.nesting_list)
    for (name, model), flag in zip(models.items(), ("MODEL", "--baseline")):
        width = model.config.matryoshka_embedding_dim
        too_large = [d for d in dims if d > width]
        if too_large:
            raise ValueError(f"{flag} {name} is {width} wide, but the sizes to score include {too_large}; pass "
                             f"--dims with sizes up to {width} (or a wider {flag}).")
        dims = [validate_dim(d, width, name="--dims") for d in dims]
    if args.precisions:
        return _evaluate_codes(models, test, dims, args)
    table = recipes.results_table({name: recipes.evaluate(m, test, dims) for name, m in models.items()})
    print(table.to_markdown())
    _write_results(table, args.output, "hit@1", _pairs_dataset(args))
    return 0


def _pairs_dataset(args: argparse.Namespace) -> dict:
    """The model card's name for what ``evaluate`` scored."""
    if args.pairs:
        return {"name": Path(args.pairs).name, "type": "custom"}
    return {"name": "chatterbot-corpus (held-out questions)", "type": "chatterbot-corpus"}


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{flag} {text!r} must be comma-separated whole numbers, e.g. 8,16,32") from None


def _evaluate_codes(models: dict, test, dims: list[int], args: argparse.Namespace) -> int:
    """``mrl-hf evaluate --precisions``: every (size, precision) of every model, codes without rescoring."""
    from . import recipes
    from .quantization import check_code_precision, format_precision_table

    precisions = [check_code_precision(p.strip()) for p in args.precisions.split(",") if p.strip()]
    table = None
    for name, model in models.items():
        scores = recipes.evaluate_codes(model, test, dims, precisions)
        print(f"\n{name}: hit@10 / MRR (%) per size and precision (binary: Hamming distance, no rescoring)")
        print(format_precision_table(scores))
        part = recipes.results_table({f"{name}, {p}": scores[p] for p in precisions})
        table = part if table is None else table + part
    _write_results(table, args.output, "hit@10", _pairs_dataset(args))
    return 0


def _evaluate_mteb(args: argparse.Namespace) -> int:
    from .evaluation.mteb_eval import chatterbot_retrieval_task, evaluate_mteb

    tasks = [chatterbot_retrieval_task(seed=args.seed) if name == "chatterbot" else name
             for name in args.mteb.split(",")]
    model = _text_model_class(args.model).from_pretrained(args.model).eval()
    dims = _int_list(args.dims, "--dims") if args.dims else None
    table = evaluate_mteb(model, tasks, dims=dims, output_folder=args.output)
    print(table.to_markdown())
    _write_results(table, args.output, table.metrics[0], {"name": args.mteb, "type": "mteb"})
    return 0


def _write_results(table, output: str | None, metric: str, eval_dataset: dict) -> None:
    """``mrl_results.json`` (what ``mrl-hf push --regenerate-card`` puts into the card) and the plot; the card
    settings file says what the results were measured on and which row is the model."""
    if output:
        import json

        from .hub.push import CARD_SETTINGS_FILE

        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        table.to_json(str(out / "mrl_results.json"))
        settings_path = out / CARD_SETTINGS_FILE
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        settings.update(eval_dataset=eval_dataset, model_method=table.methods[0])
        settings_path.write_text(json.dumps(settings, indent=1) + "\n")
        try:
            table.plot(metric, path=str(out / "mrl_accuracy_vs_dim.png"))
            print(f"\nWrote {out / 'mrl_results.json'} and {out / 'mrl_accuracy_vs_dim.png'}")
        except ImportError:
            print(f"\nWrote {out / 'mrl_results.json'} (install matplotlib for the plot)")


def _read_pairs(path: str) -> list[tuple[str, str]]:
    pairs = []
    with open(path, encoding="utf8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg}); each line must be "
                                 '{"query": ..., "answer": ...}.') from None
            if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not isinstance(
                    row.get("answer"), str):
                raise ValueError(f"{path}:{n}: each line must be a JSON object with string 'query' and 'answer'.")
            pairs.append((row["query"], row["answer"]))
    if not pairs:
        raise ValueError(f"{path} holds no pairs.")
    return pairs


def _text_model_class(path: str):
    """``MRLBertModel`` for a BERT-family checkpoint (an mrl_bert save, a BERT / sentence-transformers BERT folder),
    ``MRLModelForTextEmbedding`` (any backbone) for the others, as a Python user would choose."""
    from transformers import PretrainedConfig

    from .modeling import MRLBertModel, MRLModelForTextEmbedding

    try:
        found = PretrainedConfig.get_config_dict(path)[0]
    except (OSError, ValueError):  # a missing or unreadable checkpoint: from_pretrained says which, clearly
        return MRLBertModel
    model_type, saved_as = found.get("model_type"), (found.get("architectures") or [None])[0]
    if model_type == MRLBertModel.config_class.model_type and saved_as not in (None, MRLBertModel.__name__):
        # its sizes are those of its own head: the pooled hidden states were never trained as embeddings
        raise ValueError(f"{path} is an {saved_as} checkpoint, not a text-embedding model: its nesting_list sizes "
                         "were trained for its head, not as embeddings. Use a checkpoint saved as MRLBertModel "
                         "(`mrl-hf train text-embeddings` makes one).")
    bert = (None, MRLBertModel.config_class.model_type, *MRLBertModel._plain_model_types)  # None: BERT-era configs
    return MRLBertModel if model_type in bert else MRLModelForTextEmbedding


def _auto_class_of(folder) -> str:
    """The transformers Auto class that opens ``folder`` as the class it was saved as (its ``auto_map`` entry for
    ``architectures``): ``AutoModel`` would refuse a classifier, or open the embedding model without its head."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    saved_as = (config.get("architectures") or [None])[0]
    for auto, target in (config.get("auto_map") or {}).items():
        if auto != "AutoConfig" and str(target).rsplit(".", 1)[-1] == saved_as:
            return auto
    return "AutoModel"


def _export(args: argparse.Namespace) -> int:
    if args.sentence_transformers == args.remote_code:
        raise ValueError("choose one format: --sentence-transformers or --remote-code")
    if args.remote_code:
        from .hub.push import export_remote_code

        try:
            path = export_remote_code(args.model, args.output, overwrite=args.overwrite)
        except FileExistsError as exc:
            raise FileExistsError(str(exc).replace("pass overwrite=True", "pass --overwrite")) from exc
        print(f"Wrote {path} with its modeling code: without mrl_hf, open it with\n"
              f"  {_auto_class_of(path)}.from_pretrained({str(path)!r}, trust_remote_code=True)")
        return 0
    from .export import export_sentence_transformers
    from .modeling import MRLBertModel

    if _text_model_class(args.model) is not MRLBertModel:
        raise ValueError(f"{args.model} is not a BERT-family checkpoint, and --sentence-transformers exports "
                         "MRLBertModel checkpoints; an MRLModelForTextEmbedding save (any backbone) is a "
                         "sentence-transformers folder already (SentenceTransformer(path) loads it), or use "
                         "--remote-code.")
    model = MRLBertModel.from_pretrained(args.model)
    try:
        path = export_sentence_transformers(model, args.output, overwrite=args.overwrite)
    except FileExistsError as exc:
        raise FileExistsError(str(exc).replace("pass overwrite=True", "pass --overwrite")) from exc
    trust = ", trust_remote_code=True" if (Path(path) / "mrl_adaptor.py").is_file() else ""  # the adaptor's MLP
    print(f"Wrote a sentence-transformers folder to {path}. Load it at any trained size "
          f"{model.config.nesting_list}:\n  SentenceTransformer({str(path)!r}, truncate_dim={_mid(model)}{trust})")
    if model.adaptor is not None:
        print("Note: vLLM cannot serve this folder (it skips the adaptor's modules without an error); serve it with "
              "sentence-transformers or mrl_hf. `mrl-hf inspect` reports this.")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .contract import inspect_checkpoint

    report = inspect_checkpoint(args.checkpoint, revision=args.revision, token=args.token)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1


def _mid(model) -> int:
    dims = model.config.nesting_list
    return model.config.truncate_dim or dims[(len(dims) - 1) // 2]


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    url = push_to_hub(args.folder, args.repo_id, token=args.token, private=args.private or None,
                      remote_code=args.remote_code, regenerate_card=args.regenerate_card or None,
                      commit_message=args.message)
    print(f"Pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def _matryoshkafy(args: argparse.Namespace) -> int:
    from . import recipes
    from .hub import save_for_hub
    from .nesting import validate_nesting_list

    _check_before_training(args.model, args.output_dir)
    if args.pair_weight is not None and not args.pairs:
        raise ValueError("--pair-weight weighs the supervised term of --pairs; give --pairs too, or leave it out.")
    texts = recipes.read_corpus(args.corpus, args.column)
    nesting = validate_nesting_list(_int_list(args.nesting_list, "--nesting-list")) if args.nesting_list else None
    pairs = [(q, a) for q, a in _read_pairs(args.pairs)] if args.pairs else None
    queries = recipes.read_corpus(args.queries, args.column) if args.queries else None
    model, table = recipes.matryoshkafy_corpus(texts, args.model, nesting, epochs=args.epochs, pairs=pairs,
                                               pair_weight=_or(args.pair_weight, 1.0), held_out=args.held_out,
                                               seed=args.seed,
                                               refit=args.refit, queries=queries)
    whose = ("each held-out query's 10 nearest held-out texts" if queries else
             "each held-out text's 10 nearest neighbours")
    out = save_for_hub(model, args.output_dir, results=table, model_method="adaptor fitted on the corpus",
                       eval_dataset={"name": f"held-out texts of {args.corpus}", "type": "user-corpus"},
                       eval_description=(f"Share (%) of {whose} under the original encoder at full size that each "
                                         "size finds in its own top 10 (no labels), each map fitted without the "
                                         "held-out texts" + (" and queries" if queries else "")
                                         + ("; the saved adaptor was then fitted on every text." if args.refit
                                            else ".")
                                         + (" The adaptor is asymmetric: embed queries with encode_query (or "
                                            "encode(..., task='query')) and documents with encode_document."
                                            if queries else "")))
    print(f"\nHeld-out {'queries' if queries else 'texts'} of the corpus: overlap@10 (%) with the original's "
          "full-size neighbours, per size:")
    print(table.to_markdown("overlap@10"))
    fitted = "every text of the corpus" if args.refit else "the texts not held out"
    print(f"\nSaved to {out}: the encoder with the adaptor (fitted on {fitted}) attached "
          f"(MRLBertModel.from_pretrained(path, truncate_dim={_mid(model)}), or mrl-hf export "
          "--sentence-transformers).")
    if queries:
        print("The adaptor is asymmetric: embed queries with model.encode_query(...) and the corpus with "
              "model.encode_document(...) (sentence-transformers: the same two methods).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrl-hf", description="Matryoshka Representation Learning for Hugging Face.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="MRL-fine-tune all-MiniLM-L6-v2 on real pairs offline and compare it per size (or --digits)",
        description="MRL-fine-tune the packaged all-MiniLM-L6-v2 on chatterbot-corpus question -> answer pairs, print "
                    "held-out retrieval quality at every size against the original model sliced, save the "
                    "checkpoint with its model card and plot, reload it with truncate_dim and run adaptive retrieval. "
                    "Offline; needs the 'demo' extra. --digits runs the small scikit-learn digits demo instead.")
    demo.add_argument("--digits", action="store_true", help="run the small digits demo (seconds, scikit-learn only)")
    demo.add_argument("--output-dir", default=DEFAULT_DEMO_DIR, help=f"where to save (default {DEFAULT_DEMO_DIR})")
    demo.add_argument("--model", default=None, help="BERT checkpoint path or Hub id (default: the packaged MiniLM)")
    demo.add_argument("--epochs", type=float, default=None,
                      help="epochs (default 1 for the text demo; full-batch steps, default 300, with --digits)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_demo, parser=demo)

    train = commands.add_parser(
        "train", help="run a training recipe and save the checkpoint with its model card",
        description="Recipes: 'text-embeddings' (MRL fine-tuning of a BERT sentence encoder on chatterbot-corpus "
                    "pairs, as examples/finetune_text_embeddings.py) and 'digits' (the small digits demo).")
    train.add_argument("recipe", choices=["text-embeddings", "digits"], help="which recipe")
    train.add_argument("--output-dir", default="outputs/mrl-text-embeddings", help="where to save the checkpoint")
    train.add_argument("--model", default=None, help="BERT checkpoint path or Hub id (default: the packaged MiniLM)")
    train.add_argument("--nesting-list", default=None,
                       help="comma-separated sizes (default: the checkpoint's own, or the halving list of its width: "
                            "12,24,...,384 for MiniLM)")
    train.add_argument("--epochs", type=float, default=None, help="epochs (default 1)")
    train.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    train.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--split-seed", type=int, default=0,
                       help="seed of the held-out split, as mrl-hf evaluate --seed (default 0: the same split)")
    train.add_argument("--keep-original", action=argparse.BooleanOptionalAction, default=None,
                       help="fine-tune without forgetting what the model knew: --teacher-weight 10 --rotation-lr 1e-2 "
                            "--freeze-bottom 1, each overridable by its own flag ('off' turns the rotation or the "
                            "frozen bottom off; docs/finetune.md: level with or "
                            "ahead of sentence-transformers' MatryoshkaLoss in and out of domain, in 0.89x its time). "
                            "Default: on for a sentence-transformers model (the packaged MiniLM), off otherwise")
    train.add_argument("--teacher-weight", type=float, default=None,
                       help="keep the full size close to the original model: MRLTrainer's teacher term with this "
                            "weight (default: 10 with --keep-original, else 0, off)")
    train.add_argument("--rotation-lr", type=_or_off(float), default=None,
                       help="also train an output rotation (orthogonal: the full-size similarities move only with "
                            "the encoder) at this learning rate, or 'off' (default: 1e-2 with --keep-original, "
                            "else off)")
    train.add_argument("--freeze-bottom", type=_or_off(int), default=None, metavar="BLOCKS",
                       help="keep the embedding layer and the first BLOCKS transformer blocks as they are (0: the "
                            "embedding layer only), or 'off' (default: 1 with --keep-original, else everything "
                            "trains)")
    train.add_argument("--precisions", default=None, metavar="CODES",
                       help="also train the prefixes as these codes (comma-separated: binary, int8), saved in the "
                            "config (mrl_hf.quantization); float32 always trains, and alone turns the code terms of a "
                            "checkpoint off (default: the checkpoint's own setting)")
    train.add_argument("--precision-sizes", default=None, metavar="SIZES",
                       help="comma-separated sizes that get the --precisions terms (default: every size)")
    train.add_argument("--quantization-weight", type=float, default=None,
                       help="weight of each code term next to its float term (default 1)")
    train.add_argument("--binary-surrogate", default=None, choices=["ste", "tanh", "ste-centred"],
                       help="how the sign is differentiated (default ste; ste-centred: codes of batch-centred "
                            "vectors, for models served with --mean-centering)")
    train.add_argument("--mean-centering", action="store_true",
                       help="attach mrl_hf.adaptor.mean_centering fitted on the training texts before saving")
    train.add_argument("--mini-batch-size", type=int, default=None,
                       help="cached contrastive loss: embed each batch this many rows at a time, so a large "
                            "--batch-size (more in-batch negatives) needs the memory of a small one (default: off)")
    train.add_argument("--embed-duplicates-once", action="store_true",
                       help="embed a text that a batch repeats (one answer to several questions) once: the same "
                            "loss for less work, the copies sharing one dropout mask (default: every row)")
    train.set_defaults(func=_train, parser=train)

    evaluate = commands.add_parser(
        "evaluate", help="per-size retrieval table (and plot) of a text embedding checkpoint",
        description="Hit@1, hit@10 and MRR of query -> answer retrieval at every size of a saved MRLBertModel "
                    "(default data: the held-out chatterbot-corpus questions).")
    evaluate.add_argument("model", help="checkpoint folder or Hub id")
    evaluate.add_argument("--baseline", default=None, help="a second checkpoint to compare, sliced the same way")
    evaluate.add_argument("--pairs", default=None, help="JSON-lines file of {\"query\": ..., \"answer\": ...}")
    evaluate.add_argument("--dims", default=None, help="comma-separated sizes (default: the model's nesting_list)")
    evaluate.add_argument("--mteb", default=None, metavar="TASKS",
                          help="evaluate with mteb instead, at every size: comma-separated mteb task names, or "
                               "'chatterbot' for the packaged held-out chatterbot-corpus retrieval task (offline)")
    evaluate.add_argument("--precisions", default=None, metavar="CODES",
                          help="score every size also as these codes, comma-separated (e.g. float32,binary,int8; "
                               "binary: Hamming distance), no rescoring")
    evaluate.add_argument("--output", default=None, help="folder for mrl_results.json and mrl_accuracy_vs_dim.png")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    evaluate.set_defaults(func=_evaluate)

    matryoshkafy = commands.add_parser(
        "matryoshkafy", help="make an existing encoder Matryoshka on your own corpus (no labels needed)",
        description="Encode the texts you will search with an existing sentence encoder (default: the packaged "
                    "all-MiniLM-L6-v2), fit the Matryoshka-Adaptor on them (PCA start, similarity distillation at "
                    "every size; with --pairs also a supervised term), score the original sliced, PCA and the adaptor "
                    "on held-out texts of the corpus, and save the encoder with the adaptor attached.")
    matryoshkafy.add_argument("--corpus", required=True,
                              help="a .txt file (one text per line), a .jsonl/.csv/.parquet file or a datasets folder")
    matryoshkafy.add_argument("--column", default="text", help="the text column of a table or dataset (default text)")
    matryoshkafy.add_argument("--output-dir", default="outputs/mrl-matryoshkafied", help="where to save the model")
    matryoshkafy.add_argument("--model", default=None, help="BERT sentence encoder path or Hub id (default: MiniLM)")
    matryoshkafy.add_argument("--nesting-list", default=None, help="comma-separated sizes (default 12,24,...,384)")
    matryoshkafy.add_argument("--epochs", type=int, default=20, help="adaptor epochs (default 20)")
    matryoshkafy.add_argument("--pairs", default=None,
                              help="optional JSON-lines file of {\"query\": ..., \"answer\": ...} for the supervised term")
    matryoshkafy.add_argument("--queries", default=None,
                              help="optional file of unlabelled queries (same formats and --column as --corpus) when "
                                   "they are another kind of text than the corpus: the adaptor is fitted on the corpus "
                                   "and centres queries on their own mean (embed them with encode_query)")
    matryoshkafy.add_argument("--pair-weight", type=float, default=None,
                              help="weight of the supervised term of --pairs (default 1)")
    matryoshkafy.add_argument("--held-out", type=float, default=0.1, help="fraction of texts held out to score")
    matryoshkafy.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                              help="after the report, fit the saved adaptor again on every text, held-out ones "
                                   "included (default; --no-refit saves the adaptor the report scored)")
    matryoshkafy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    matryoshkafy.set_defaults(func=_matryoshkafy)

    export = commands.add_parser(
        "export", help="export a checkpoint for another tool (--sentence-transformers or --remote-code)",
        description="--sentence-transformers: write a sentence-transformers folder (plain BERT + Pooling [+ Dense] "
                    "[+ adaptor]) from an MRLBertModel; load it with SentenceTransformer(path) (its default size) "
                    "or SentenceTransformer(path, truncate_dim=64). --remote-code: copy a checkpoint folder with its "
                    "modeling code, so AutoModel.from_pretrained(path, trust_remote_code=True) (the Auto class of its "
                    "kind: AutoModelForImageClassification for a classifier) opens it without mrl_hf.")
    export.add_argument("model", help="checkpoint folder (or, with --sentence-transformers, a Hub id)")
    export.add_argument("output", help="folder to write")
    export.add_argument("--sentence-transformers", action="store_true", help="export as a sentence-transformers model")
    export.add_argument("--remote-code", action="store_true",
                        help="copy the checkpoint with its modeling code (auto_map) for trust_remote_code=True")
    export.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    export.set_defaults(func=_export)

    push = commands.add_parser(
        "push", help="push a saved checkpoint folder to the Hub with its model card",
        description="Upload a checkpoint folder (config, safetensors, tokenizer, model card, plot) in one commit. "
                    "The folder is staged in a temporary copy and never modified.")
    push.add_argument("folder", help="checkpoint folder (from mrl-hf demo/train, save_for_hub or save_pretrained)")
    push.add_argument("repo_id", help="namespace/name on the Hub")
    push.add_argument("--remote-code", action=argparse.BooleanOptionalAction, default=True,
                      help="upload the modeling code (auto_map) so trust_remote_code=True works without mrl_hf "
                           "(default; folders saved by mrl_hf carry it already)")
    push.add_argument("--regenerate-card", action="store_true", help="render README.md again even if there is one")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", default=None, help="Hub write token (default: HF_TOKEN or the stored login)")
    push.add_argument("--message", default=None, help="commit message")
    push.set_defaults(func=_push)

    inspect = commands.add_parser(
        "inspect", help="report a checkpoint's Matryoshka sizes, default size, normalisation and problems",
        description="Read the Matryoshka keys of a checkpoint folder or Hub repo (mrl_hf, sentence-transformers, or "
                    "plain transformers with vLLM / Jina keys) and report the sizes, the default size and the "
                    "normalisation each tool will use, and every problem that makes a tool misbehave, with its fix. "
                    "Exit status 1 when there are problems.")
    inspect.add_argument("checkpoint", help="checkpoint folder or Hub id")
    inspect.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    inspect.add_argument("--token", default=None, help="Hub token for a private repo")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:  # one line, not a traceback
        message = " ".join(str(exc).split())
        print(f"mrl-hf {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
