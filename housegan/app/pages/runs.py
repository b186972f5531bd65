"""Runs: the latest MLflow runs with their funnel, the champion against the previous model, and
links into the MLflow and Prefect UIs."""

from __future__ import annotations

import streamlit as st

from housegan import tracking
from housegan.app import runs, ui
from housegan.app.problems import check_tracking

settings = ui.settings()
app = settings.app
st.title("Runs")

mlflow_ui, prefect_ui = runs.mlflow_ui_url(settings), runs.prefect_ui_url(settings)
left, right = st.columns(2)
if mlflow_ui:
    left.link_button("MLflow UI", mlflow_ui, icon=":material/open_in_new:")
else:
    left.caption(f"MLflow: {settings.mlflow_tracking_uri} (no UI: not a server)")
if prefect_ui:
    right.link_button("Prefect UI", prefect_ui, icon=":material/open_in_new:")
else:
    right.caption("Prefect: no server configured (PREFECT_API_URL) or running in the stack")

with ui.problems_shown(settings):
    check_tracking(settings)
    recent = tracking.recent_runs(
        settings.mlflow_experiment, app.runs_shown, settings.mlflow_tracking_uri
    )

st.subheader(f"Latest runs in '{settings.mlflow_experiment}'")
if not recent:
    st.info(f"No runs in the experiment '{settings.mlflow_experiment}' yet.")
else:
    st.dataframe(
        runs.runs_table(recent, mlflow_ui),
        hide_index=True,
        column_config={"link": st.column_config.LinkColumn("link", display_text="open")},
    )
    curate_run = runs.latest_of_stage(recent, "curate")
    if curate_run is not None:
        st.subheader(f"Funnel of the latest curation ({curate_run.name})")
        totals = runs.funnel_totals(curate_run)
        st.bar_chart(totals, x="stage", y="photos", horizontal=True, sort=False)
        with st.expander("per city and image type"), ui.problems_shown(settings):
            st.dataframe(
                tracking.load_run_table(
                    curate_run.run_id, "funnel.json", settings.mlflow_tracking_uri
                ),
                hide_index=True,
            )

st.subheader("Champion against the previous model")
ref = tracking.parse_registry_uri(app.model_uri)
name = ref.name if ref else settings.gan.registered_model_name
with ui.problems_shown(settings):
    versions = runs.aliased_versions(
        name, (runs.CHAMPION, runs.PREVIOUS), settings.mlflow_tracking_uri
    )
champion, previous = versions.get(runs.CHAMPION), versions.get(runs.PREVIOUS)
if champion is None:
    st.info(f"No champion yet: no version of '{name}' carries the alias 'champion'.")
else:
    st.markdown(f"**champion**: {runs.version_line(champion)}")
    if previous is None:
        st.caption("No previous model (alias 'previous') to compare with yet.")
    else:
        st.markdown(f"**previous**: {runs.version_line(previous)}")
    st.dataframe(runs.compare_versions(champion, previous), hide_index=True)
