"""Remote code: copy a model's modeling code into its checkpoint folder, flat and self-contained, with ``auto_map``.

Then ``AutoModel.from_pretrained(repo_id, trust_remote_code=True)`` works where mrl_hf is not installed.
transformers loads remote code as flat files of one folder that import each other with ``from .name import``;
so every mrl_hf module the model's module imports relatively (transitively) is written as
``mrl_hf_<dotted_path>.py`` and those imports (``from ..config import X``) are rewritten to the flat names.
What a modeling module needs, it imports relatively; what it only uses when mrl_hf is installed (atomic saves,
publishing, training tools) it imports by absolute name inside ``try``, which is neither copied nor required by
transformers' import check. The copies register with the Auto classes only where nothing is registered yet: a
process that has mrl_hf keeps its own classes.
"""
from __future__ import annotations

import ast
import importlib
import json
import os
import re
from pathlib import Path

from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

PACKAGE = "mrl_hf"
_AUTO_CLASSES = (AutoModel, AutoModelForMaskedLM, AutoModelForImageClassification, AutoModelForSequenceClassification)
_IMPORT = re.compile(r"^(?P<indent>\s*)from\s+(?P<module>\.+[\w.]*)\s+import\s", re.M)


def flat_name(module: str) -> str:
    """``mrl_hf.modeling.bert`` -> ``mrl_hf_modeling_bert`` (the file name of its copy, without ``.py``)."""
    return module.replace(".", "_")


def _resolve(module: str, is_package: bool, target: str) -> str:
    """Absolute name of ``target`` (as written after ``from``) imported inside ``module``."""
    if not target.startswith("."):
        return target
    level = len(target) - len(target.lstrip("."))
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    rest = target.lstrip(".")
    return ".".join(base + ([rest] if rest else []))


def module_closure(module: str) -> dict[str, str]:
    """``{module name: source}`` of ``module`` and every mrl_hf module it imports, directly or not."""
    found: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        mod = importlib.import_module(name)
        source = Path(mod.__file__).read_text(encoding="utf8")
        found[name] = source
        is_package = Path(mod.__file__).name == "__init__.py"
        _check_optional_imports(name, source)
        for match in _IMPORT.finditer(source):
            target = _resolve(name, is_package, match["module"])
            if target == PACKAGE:
                raise ValueError(f"{name} imports names from the mrl_hf package root ('from {match['module']} "
                                 "import ...'); remote code needs imports from the defining modules.")
            todo.append(target)
    return found


def _check_optional_imports(name: str, source: str) -> None:
    """An absolute ``mrl_hf`` import in copied code must sit inside ``try``: the copy runs without mrl_hf."""
    def visit(node, guarded: bool):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not guarded:
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if any(n == PACKAGE or n.startswith(PACKAGE + ".") for n in names) and getattr(node, "level", 0) == 0:
                raise ValueError(f"{name} line {node.lineno} imports mrl_hf by absolute name outside a try block; the "
                                 "remote-code copy runs without mrl_hf: import modeling code relatively, and optional "
                                 "tools inside try/except ImportError.")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded or isinstance(node, ast.Try))

    visit(ast.parse(source), False)


def _rewrite(name: str, source: str) -> str:
    module = importlib.import_module(name)
    is_package = Path(module.__file__).name == "__init__.py"

    def repl(match: re.Match) -> str:
        target = _resolve(name, is_package, match["module"])
        return f"{match['indent']}from .{flat_name(target)} import "

    source = _IMPORT.sub(repl, source)
    return _guard_registrations(source)


def _is_registration(node: ast.stmt) -> bool:
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        func = node.value.func
        return isinstance(func, ast.Attribute) and func.attr == "register"
    if isinstance(node, ast.For):
        return all(_is_registration(child) for child in node.body)
    return False


def _guard_registrations(source: str) -> str:
    """Register with the Auto classes only where mrl_hf has not: a process that has mrl_hf keeps its classes."""
    lines = source.splitlines(keepends=True)
    for node in reversed(ast.parse(source).body):
        if _is_registration(node):
            body = "".join("    " + line.replace("exist_ok=True", "exist_ok=False")
                           for line in lines[node.lineno - 1: node.end_lineno])
            lines[node.lineno - 1: node.end_lineno] = [
                "try:\n", body, "except ValueError:  # already registered, e.g. by an installed mrl_hf\n", "    pass\n"]
    return "".join(lines)


def auto_classes(model_class: type) -> dict[str, type]:
    """The config class (``AutoConfig``) and every Auto class registered for it within mrl_hf, by Auto name."""
    config_class = model_class.config_class
    found = {"AutoConfig": config_class}
    for auto in _AUTO_CLASSES:
        registered = auto._model_mapping._extra_content.get(config_class)
        if registered is not None and registered.__module__.startswith(PACKAGE + "."):
            found[auto.__name__] = registered
    if model_class not in found.values():
        found.setdefault("AutoModel", model_class)
    return found


def write_remote_code(model_class: type, folder: str | os.PathLike) -> dict[str, str]:
    """Write the flat code files of ``model_class`` into ``folder`` (a checkpoint being staged, not yet committed)
    and add ``auto_map`` to its ``config.json``. Returns the ``auto_map``."""
    if not model_class.__module__.startswith(PACKAGE + "."):
        raise TypeError(f"{model_class.__name__} is not an mrl_hf model (module {model_class.__module__}); "
                        "remote code export covers mrl_hf's own model classes.")
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} does not exist; save the model into {folder} first.")
    classes = auto_classes(model_class)
    modules: dict[str, str] = {}
    for cls in classes.values():
        modules.update(module_closure(cls.__module__))
    for name, source in modules.items():
        (folder / f"{flat_name(name)}.py").write_text(_rewrite(name, source), encoding="utf8")
    auto_map = {auto: f"{flat_name(cls.__module__)}.{cls.__name__}" for auto, cls in classes.items()}
    config = json.loads(config_path.read_text(encoding="utf8"))
    config["auto_map"] = auto_map
    # written in place: callers write into a staging folder that is committed as a whole (mrl_hf.saving)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf8")
    _map_processor(model_class, folder)
    return auto_map


def strip_remote_code(folder: str | os.PathLike) -> None:
    """Undo ``write_remote_code`` in a staging ``folder``: remove mrl_hf's flat code files and the ``auto_map`` of
    ``config.json`` and ``processor_config.json`` (a checkpoint that opens only where mrl_hf is installed)."""
    folder = Path(folder)
    for path in folder.glob(f"{PACKAGE}_*.py"):
        path.unlink()
    for name in ("config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            settings = json.loads(path.read_text(encoding="utf8"))
            if settings.pop("auto_map", None) is not None:
                path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf8")


def _map_processor(model_class: type, folder: Path) -> None:
    """A model with an mrl_hf processor (ALIGN's: tokenizer + image processor) gets ``auto_map`` in its
    ``processor_config.json`` too, so that ``AutoProcessor.from_pretrained(..., trust_remote_code=True)`` builds it
    where mrl_hf is not installed (else it falls back to a bare tokenizer)."""
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    processor = PROCESSOR_MAPPING._extra_content.get(model_class.config_class)
    path = folder / "processor_config.json"
    if processor is None or not processor.__module__.startswith(PACKAGE + ".") or not path.is_file():
        return
    settings = json.loads(path.read_text(encoding="utf8"))
    settings["auto_map"] = {"AutoProcessor": f"{flat_name(processor.__module__)}.{processor.__name__}"}
    settings.setdefault("processor_class", processor.__name__)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf8")
