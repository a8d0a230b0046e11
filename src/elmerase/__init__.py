"""elmerase: erase a concept from a causal language model with ELM (Erasure of Language Memory).

    import elmerase
    result = elmerase.erase("tiny")            # a preset name, a YAML path, a dict or an EraseConfig
    print(result.output_dir, result.metrics)
"""

from .api import EraseResult, erase
from .config import EraseConfig, load_config

__all__ = ["erase", "EraseResult", "EraseConfig", "load_config"]
__version__ = "0.1.0"
