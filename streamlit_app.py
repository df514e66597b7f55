"""Entry point of the web app: `streamlit run streamlit_app.py` (or `make run`)."""
import streamlit as st

st.set_page_config(page_title="LSM classifier", page_icon=":microscope:", layout="wide")

pages = [st.Page("pages/models.py", title="Models", icon=":material/model_training:", default=True)]
st.navigation(pages).run()
