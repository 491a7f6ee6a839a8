"""Tag-LLM Studio engine: a frozen causal LLM extended with learned input tags.

Importable without Streamlit; see README.md for the module map.

Importing the package changes nothing process-wide: the malloc tuning of
``_allocator`` is applied by the entry points (the CLI, hence every job
process, and the bench scripts), never by a program that merely imports the
engine, such as the multi-threaded Streamlit server.
"""

__version__ = "0.1.0"
