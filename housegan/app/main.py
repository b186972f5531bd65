"""``streamlit run`` entry point: the three pages in a sidebar menu."""

from __future__ import annotations

import streamlit as st

from housegan.app import PAGES_DIR

st.set_page_config(page_title="housegan", page_icon=":material/home:", layout="wide")
pages = [
    st.Page(PAGES_DIR / "generate.py", title="Generate", icon=":material/image:", default=True),
    st.Page(PAGES_DIR / "label.py", title="Label photos", icon=":material/label:"),
    st.Page(PAGES_DIR / "runs.py", title="Runs", icon=":material/monitoring:"),
]
st.navigation(pages).run()
