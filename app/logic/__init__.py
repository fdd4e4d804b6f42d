"""Plain-Python logic behind the dashboard pages: no Streamlit imports here, so every piece is
tested directly (pages in app/views/ only lay out widgets and call these functions)."""
