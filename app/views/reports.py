"""Reports: the `gamma-lab reproduce` reports in the data folder (tasks.reproduce.list_reports), newest
first, each with its verdicts; one opened shows its table and figures, offers its self-contained HTML
as a download and links to the Phase portrait of each sweep behind it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.ui import resources
from tasks.reproduce import list_reports

res = resources()
st.title("Reproduction reports")
reports = list_reports(res.settings.data_dir)
if not reports:
    st.info(
        "No report yet. Run `gamma-lab reproduce --list` to see the presets, then e.g. "
        "`gamma-lab reproduce deep-linear`; its report appears here."
    )
    st.stop()

overview = pd.DataFrame(
    {
        "preset": [r["preset"] for r in reports],
        "created (UTC)": [r.get("created_utc", "") for r in reports],
        "scale": [r.get("scale", "") for r in reports],
        "verdict": [r.get("verdict", "") for r in reports],
        "rows passed": [
            f"{sum(x.get('verdict') == 'pass' for x in r.get('rows', []))}/"
            f"{sum(x.get('verdict') != 'info' for x in r.get('rows', []))}"
            for r in reports
        ],
        "claim": [r.get("claim", "") for r in reports],
    }
)
st.dataframe(overview, hide_index=True, width="stretch")

labels = [f"{r['preset']} · {r.get('created_utc', '')} · {r.get('verdict', '')}" for r in reports]
chosen = st.selectbox("Open a report", range(len(reports)), format_func=lambda i: labels[i], key="reports.pick")
report = reports[int(chosen or 0)]
st.subheader(f"{report['preset']}: {report.get('verdict', '')}")
st.caption(f"Claim: {report.get('claim', '')} · scale {report.get('scale', '')} · budget: {report.get('budget', '')}")
st.caption(report.get("loss_convention", ""))
table = pd.DataFrame(report.get("table", []), columns=report.get("columns") or None)
table["note"] = [" · ".join(x for x in (row.get("why", ""), row.get("note", "")) if x) for row in report["rows"]]
st.dataframe(table, hide_index=True, width="stretch")
for note in report.get("notes", []):
    st.caption(note)

for sweep_id in report.get("sweeps", []):
    st.page_link("views/portrait.py", label=f"Phase portrait of sweep {sweep_id}", icon=":material/grid_on:",
                 query_params={"sweep": sweep_id})

# The figures from the JSON (plotly specs), not the HTML file: a file in a shared data folder is not
# run as a script inside the dashboard's origin.
for k, spec in enumerate(report.get("figures", [])):
    try:
        st.plotly_chart(go.Figure(spec), key=f"reports.figure.{k}")
    except ValueError as exc:
        st.warning(f"figure {k + 1} of the report cannot be drawn: {exc}")
page = Path(report["folder"]) / "report.html"
if page.is_file():
    st.download_button("Download the HTML report (self-contained: figures, table, budget)",
                       page.read_bytes(), file_name=f"{Path(report['folder']).name}.html", mime="text/html",
                       key="reports.download")  # fmt: skip
else:
    st.warning(f"{page} is missing: only the JSON table is shown")
