"""Label photos: the least certain photo first, one click (or key) per image type; every label
is appended to the label table that curation trains its type classifier on."""

from __future__ import annotations

import streamlit as st

from housegan.app import labelling, ui
from housegan.app.problems import check_store
from housegan.config import IMAGE_TYPES

settings = ui.settings()
app = settings.app
store = settings.store_uri
options = settings.storage_options()
st.title("Label photos")

with ui.problems_shown(settings):
    check_store(settings)
    curated_uri = labelling.latest_curated_uri(store, options)
    curated = ui.curated(curated_uri, ui.options_json(settings))
    table = labelling.read_label_table(store, options)

st.session_state.setdefault("skipped", [])
cities, clusters = labelling.filter_choices(curated)
left, right = st.columns(2)
chosen_cities = left.multiselect("Cities", cities, key="cities", placeholder="all cities")
chosen_clusters = right.multiselect("Clusters", clusters, key="clusters", placeholder="all")

counts = labelling.label_counts(table, curated)
for column, image_type in zip(st.columns(len(IMAGE_TYPES)), IMAGE_TYPES, strict=True):
    column.metric(image_type, counts[image_type])

retrained = st.session_state.get("retrained")
queue = labelling.label_queue(
    curated,
    table,
    app.label_queue,
    cities=chosen_cities,
    clusters=chosen_clusters,
    skipped=st.session_state.skipped,
    retrained=retrained.types if retrained is not None else None,
)


def _record(key: str, sha256: str, label: str) -> None:
    part = labelling.append_label(store, key, sha256, label, app.labeller, options)
    st.session_state.last_label = (key, label, part)


def _skip(sha256: str) -> None:
    st.session_state.skipped = [*st.session_state.skipped, sha256]


if "last_label" in st.session_state:
    key, label, _ = st.session_state.last_label
    st.success(f"Labelled {key} as {label}.", icon=":material/check:")

if queue.empty:
    st.info(
        "Nothing left to label here: every usable photo in this selection has a label. "
        "Widen the filters, or run curation again after new photos land."
    )
else:
    photo = queue.iloc[0]
    picture, about = st.columns([3, 2])
    with ui.problems_shown(settings):
        picture.image(
            ui.thumbnail(photo.uri, 512, ui.options_json(settings)),
            caption=photo.key,
            output_format="PNG",
            width="stretch",
        )
    about.markdown(
        f"**{photo.city}** · cluster {photo.cluster}  \n"
        f"suggested: **{photo.suggested_label}** "
        f"(confidence {photo.type_confidence:.2f})  \n"
        f"{labelling.margin_text(photo.type_margin)}  \n"
        f"{len(queue)} photos in the queue"
    )
    keys = labelling.shortcut_keys()  # Streamlit shows each key on its button
    for image_type in IMAGE_TYPES:
        about.button(
            image_type,
            key=f"label-{image_type}",
            on_click=_record,
            args=(photo.key, photo.sha256, image_type),
            shortcut=keys[image_type],
            type="primary" if image_type == photo.suggested_label else "secondary",
            width="stretch",
        )
    about.button(
        "skip", key="skip", on_click=_skip, args=(photo.sha256,), shortcut="S", width="stretch"
    )

st.divider()
st.subheader("Type classifier")
st.caption(
    "Retrain the image-type classifier head on the current labels (over the newest clustering's "
    "features, as curation does) to see how well it separates the types, and reorder the queue "
    "by its new margins."
)
if st.button("Retrain on current labels", key="retrain", icon=":material/model_training:"):
    with ui.problems_shown(settings), st.spinner("Training..."):
        st.session_state.retrained = labelling.retrain(store, curated, table, settings, options)
    st.rerun()
if retrained is not None:
    report = retrained.report
    if report is None:
        st.info("The classifier needs labels of at least two image types.")
    else:
        accuracy = "-" if report.cv_accuracy is None else f"{report.cv_accuracy:.3f}"
        left, right = st.columns(2)
        left.metric("held-out accuracy", accuracy, help=f"{report.cv_folds}-fold cross-validation")
        right.metric("labels used", retrained.labels_used)
        confusion = labelling.confusion_frame(report)
        if confusion is not None:
            st.dataframe(confusion)
