"""lm-evaluation-harness tasks (``wmdp_bio``, ``wmdp_cyber``, ``mmlu`` or your own YAML) on a loaded model.

Needs the optional extra: ``pip install 'elmerase[lmeval]'``. The model is handed to lm-eval's ``HFLM`` as it is,
so a PeftModel is evaluated with its adapter on, or off inside ``with model.disable_adapter():``. Local task YAML
files are found through ``include_path`` (a folder of task YAMLs); built-in tasks load their data from the hub.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..models import uses_bos

log = logging.getLogger(__name__)


class LmEvalError(RuntimeError):
    """lm-eval is missing or a task cannot run; the message names the fix."""


@dataclass
class LmEvalSettings:
    """Which lm-eval tasks to run and how."""

    tasks: list[str] = field(default_factory=list, metadata={"help": "Task or group names, e.g. [wmdp_bio, mmlu]; "
                                                             "empty: skip lm-eval."})
    include_path: str | None = field(default=None, metadata={"help": "A folder of your own task YAML files."})
    limit: float | None = field(default=None, metadata={"help": "Documents per task (an int) or a fraction (< 1)."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (None: each task's default)."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size."})
    metrics: list[str] = field(default_factory=lambda: ["acc", "acc_norm"],
                               metadata={"help": "Metrics kept in the report (with their stderr)."})


def run_lmeval(model, tokenizer, settings: LmEvalSettings) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{task: {metric: {"value": v, "stderr": s}}}`` for every task (and group) lm-eval reports."""
    if not settings.tasks:
        return {}
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError as err:
        raise LmEvalError("lm-eval is not installed; pip install 'elmerase[lmeval]' (or drop lmeval.tasks)") from err
    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
              add_bos_token=uses_bos(tokenizer))
    limit = settings.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    try:
        output = simple_evaluate(model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot,
                                 limit=limit, task_manager=_task_manager(settings), bootstrap_iters=100,
                                 log_samples=False)
    except Exception as err:  # noqa: BLE001 - lm-eval raises bare exceptions for unknown tasks, offline hubs ...
        raise LmEvalError(f"lm-eval failed on {settings.tasks}: {type(err).__name__}: {err}. Unknown task? "
                          f"Offline? Point lmeval.include_path at a folder of local task YAMLs.") from err
    results = parse_results(output.get("results", {}) if output else {}, settings.metrics)
    log.info("lm-eval %s done in %.1fs", ",".join(settings.tasks), time.perf_counter() - start)
    return results


def _task_manager(settings: LmEvalSettings):
    """A TaskManager; when every task is in include_path, lm-eval's 10k built-in YAMLs are not indexed."""
    from lm_eval.tasks import TaskManager

    if settings.include_path:
        local = TaskManager(include_path=settings.include_path, include_defaults=False)
        if all(t in local.all_tasks for t in settings.tasks):
            return local
        return TaskManager(include_path=settings.include_path)
    return TaskManager()


def parse_results(results: dict[str, dict[str, Any]], metrics: list[str]) -> dict[str, dict[str, dict]]:
    """lm-eval's ``{"task": {"acc,none": v, "acc_stderr,none": s}}`` -> ``{"task": {"acc": {value, stderr}}}``."""
    out: dict[str, dict[str, dict]] = {}
    for task, values in results.items():
        row = {}
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if name not in metrics or not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{name}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, (int, float)) and not math.isnan(stderr) else None
            row[name] = {"value": float(value), "stderr": stderr}
        if row:
            out[task] = row
    return out
