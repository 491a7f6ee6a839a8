"""UI-only helpers shared by the Streamlit pages of Tag-LLM Studio.

Nothing here does science: the pages and these helpers call ``tagllm_core``
for every model, chemistry, biology and job operation. The modules hold the
glue a page would otherwise repeat: cached loaders (``state``), the sidebar,
tag-card summaries, input plumbing, plotly figures, the row detail view, the
jobs panel and the tag-interpretability view (``interpret``, whose maths is
meant to move to ``tagllm_core``).
"""
