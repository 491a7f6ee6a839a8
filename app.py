"""Tag-LLM Studio: `streamlit run app.py`.

A frozen language model extended with learned input tags (Shen et al., 2024):
predict with function tags, train new ones in the background, manage the tag
library. The pages live in ``pages/``; shared UI helpers in ``ui/``; all the
science in ``tagllm_core``.
"""

import os

# Offline unless told otherwise: the bundled backbone needs no network. A value the user set
# (HF_HUB_OFFLINE=0 to download a hub id given as TAGLLM_BACKBONE) is kept, and transformers follows it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Tag-LLM Studio", page_icon="🏷️", layout="wide",
                   menu_items={"About": "Tag-LLM Studio: a frozen LLM with learned input tags "
                                        "for molecules and proteins (Shen et al., 2024)."})

from ui import sidebar, state  # noqa: E402

page = st.navigation([
    st.Page("pages/predict.py", title="Predict", icon="🔮", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/library.py", title="Tag library", icon="📚"),
])
backbone = state.backbone()
sidebar.render(backbone)
page.run()
