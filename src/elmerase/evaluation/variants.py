"""The models one evaluation compares: the original and each erased model, with one base model in memory.

Adapters are loaded into one PeftModel and switched on and off (``disable_adapter`` for the original,
``set_adapter`` for each erased model). A merged model (a full model folder, no ``adapter_config.json``) is
loaded when its turn comes and released after it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path
from typing import Iterator

from ..config import ModelConfig
from ..models import load_model

log = logging.getLogger(__name__)

ORIGINAL = "original"


def is_adapter(path: str | Path) -> bool:
    return (Path(path).expanduser() / "adapter_config.json").is_file()


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Variants:
    """Labels -> model states. ``adapters`` maps a label to an adapter folder or a merged-model folder.

    Given a PeftModel and no ``adapters``, its own adapters are the erased models ("default" is labelled
    "erased").
    """

    def __init__(self, model, tokenizer, adapters: dict[str, str] | None = None,
                 model_cfg: ModelConfig | None = None):
        self.tokenizer = tokenizer
        self.model_cfg = model_cfg or ModelConfig()
        self.model = model
        self.merged: dict[str, str] = {}
        self.adapter_names: dict[str, str] = {}  # label -> peft adapter name
        self.sources: dict[str, str] = {}  # label -> folder it came from
        self._wrapped = False
        self._added: list[str] = []  # adapters loaded into a PeftModel we were given, removed again by close()
        self._was_active = getattr(model, "active_adapter", None) if is_peft(model) else None
        for label, path in (adapters or {}).items():
            self._add(label, str(path))
        if not adapters and is_peft(model):
            for name in model.peft_config:
                self.adapter_names["erased" if name == "default" else name] = name
        self.labels = [ORIGINAL] + list(self.adapter_names) + list(self.merged)

    def _add(self, label: str, path: str) -> None:
        if label == ORIGINAL or label in self.adapter_names or label in self.merged:
            raise ValueError(f"model label '{label}' is used twice (or is 'original'); give each --adapter its own "
                             f"LABEL=PATH")
        folder = Path(path).expanduser()
        if is_adapter(folder):
            self._load_adapter(label, folder)
        elif (folder / "config.json").is_file() or folder.suffix == ".gguf":
            self.merged[label] = path
        else:
            raise FileNotFoundError(f"'{path}' is neither a peft adapter folder (adapter_config.json) nor a model "
                                    f"folder (config.json); pass the folder 'elmerase erase' wrote (adapter/)")

    def _load_adapter(self, label: str, folder: Path) -> None:
        from peft import PeftModel

        if not is_peft(self.model):
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=label, is_trainable=False)
            self._wrapped = True
        else:
            self.model.load_adapter(str(folder), adapter_name=label, is_trainable=False)
            self._added.append(label)
        self.model.eval()
        self.adapter_names[label] = label
        self.sources[label] = str(folder)
        log.info("adapter %s <- %s", label, folder)

    @contextlib.contextmanager
    def active(self, label: str) -> Iterator[tuple[object, object]]:
        """(model, tokenizer) in the state ``label`` for the duration of the block."""
        if label in self.merged:
            cfg = ModelConfig(**{**self.model_cfg.__dict__, "name": self.merged[label]})
            model, tokenizer = load_model(cfg)
            try:
                yield model, tokenizer
            finally:
                del model
                gc.collect()
        elif label == ORIGINAL:
            if is_peft(self.model):
                with self.model.disable_adapter():
                    yield self.model, self.tokenizer
            else:
                yield self.model, self.tokenizer
        elif label in self.adapter_names:
            self.model.set_adapter(self.adapter_names[label])
            yield self.model, self.tokenizer
        else:
            raise KeyError(f"unknown model label '{label}'; known: {', '.join(self.labels)}")

    def close(self):
        """The model as it was given: adapters this object loaded are removed, the active adapter restored."""
        if self._wrapped:
            self.model = self.model.unload()
            self._wrapped = False
        if self._was_active is not None:
            self.model.set_adapter(self._was_active)
        for label in self._added:
            self.model.delete_adapter(label)
        self._added = []
        return self.model

    def describe(self) -> dict[str, dict]:
        info = {ORIGINAL: {"model": _model_name(self.model)}}
        for label, name in self.adapter_names.items():
            info[label] = {"adapter": self.sources.get(label, f"peft adapter '{name}' of the given model")}
        for label, path in self.merged.items():
            info[label] = {"merged": path}
        return info


def _model_name(model) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return str(getattr(base.config, "name_or_path", "") or type(base).__name__)
