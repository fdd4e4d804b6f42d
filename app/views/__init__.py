"""Dashboard pages, run by st.navigation in app/main.py. Not named pages/: Streamlit would then serve each
file on its own (multipage v1) when a URL is opened before any session ran main.py."""
