"""Dashboard entry: `streamlit run app/main.py` (or `gamma-lab serve`). Builds navigation and starts
shared resources (registry, recorder thread) once per server; every page lives in app/views/."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app/main.py` puts app/ (not the repository root) on sys.path.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from app.auth import gate  # noqa: E402
from app.ui import broken_store_errors, resources, show_broken_store, show_store_held  # noqa: E402
from storage.metric_store import StoreLocked  # noqa: E402

st.set_page_config(page_title="gamma-lab", page_icon="γ", layout="wide")
try:
    res = resources()
except broken_store_errors() as exc:  # a corrupt registry/metric file: say which and what to do
    show_broken_store(exc)
    st.stop()

# The default page is served at the root URL only (Streamlit gives it the pathname ""), so typing
# http://host:port/launch found no page: a hidden twin serves the same script at /launch. The
# default keeps another internal url_path (page identities are hashes of it and must differ);
# st.switch_page("views/launch.py") picks the first page of that file, i.e. the root.
LAUNCH = st.Page("views/launch.py", title="Launch", icon=":material/rocket_launch:", url_path="home", default=True)
LAUNCH_AT_URL = st.Page(
    "views/launch.py", title="Launch", icon=":material/rocket_launch:", url_path="launch", visibility="hidden"
)
PAGES = [
    LAUNCH,
    st.Page("views/runs.py", title="Runs", icon=":material/list:", url_path="runs"),
    st.Page("views/portrait.py", title="Phase portrait", icon=":material/grid_on:", url_path="portrait"),
    st.Page("views/trajectories.py", title="Trajectories", icon=":material/show_chart:", url_path="trajectories"),
    st.Page("views/overlays.py", title="Overlays", icon=":material/stacked_line_chart:", url_path="overlays"),
    st.Page("views/diagnostics.py", title="Diagnostics", icon=":material/monitor_heart:", url_path="diagnostics"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("views/reports.py", title="Reports", icon=":material/science:", url_path="reports"),
    st.Page("views/workers.py", title="Workers", icon=":material/dns:", url_path="workers"),
    LAUNCH_AT_URL,
]
page = st.navigation(PAGES, position="hidden")
# Before anything of the lab is drawn: a shared lab asks who you are (app/auth.py); the URL's page
# is already chosen, so after the login the user lands where the link pointed.
gate(res.settings)
# The menu is drawn here, not by st.navigation: Streamlit's menu highlights the page being run, and
# at /launch that is the hidden twin, so no entry was highlighted. A page link is highlighted when
# its page is the one running, so the Launch entry links to whichever of the two runs now.
at_launch_url = page.url_path == LAUNCH_AT_URL.url_path
with st.sidebar:
    for entry in PAGES:
        if entry.visibility == "visible":
            target = LAUNCH_AT_URL if entry is LAUNCH and at_launch_url else entry
            st.page_link(target, label=entry.title, icon=entry.icon)
st.sidebar.caption(f"data: `{res.settings.data_dir}` · {res.recorder_note}")
try:
    page.run()
except broken_store_errors() as exc:  # e.g. the file broke while the dashboard was running
    show_broken_store(exc)
except StoreLocked:  # another process records: say which; the page retries by itself
    show_store_held(res)
