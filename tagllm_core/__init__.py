"""Tag-LLM Studio engine: a frozen causal LLM extended with learned input tags.

Importable without Streamlit; see README.md for the module map.
"""

from ._allocator import tune as _tune_allocator

_tune_allocator()

__version__ = "0.1.0"
