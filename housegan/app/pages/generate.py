"""Generate: a city, an image type and a seed -> reproducible synthetic images, each beside its
nearest real training photo."""

from __future__ import annotations

import streamlit as st

from housegan.app import generation, novelty, ui
from housegan.gan import serving

settings = ui.settings()
app = settings.app
st.title("Generate")
st.info(generation.SYNTHETIC_NOTICE, icon=":material/info:")

with ui.problems_shown(settings):
    card = generation.resolve_model(app.model_uri, settings)
    model = ui.model(card.load_uri, settings.mlflow_tracking_uri, app.device)

if "seed" not in st.session_state:
    st.session_state.seed = 0


def _new_seed() -> None:
    st.session_state.seed = generation.new_seed()


left, middle, right = st.columns(3)
city = left.selectbox("City", model.vocab["city"], key="city")
image_type = middle.selectbox("Image type", model.vocab["image_type"], key="image_type")
n = right.slider("Images", 1, app.max_images, min(4, app.max_images), key="n")
left, middle, right = st.columns(3)
seed = int(left.number_input("Seed", min_value=0, step=1, key="seed"))
middle.button("New seed", on_click=_new_seed, icon=":material/casino:", key="new_seed")
resampling = right.radio(
    "Upscaling",
    list(generation.RESAMPLING),
    index=list(generation.RESAMPLING).index(app.resampling),
    horizontal=True,
    key="resampling",
)

images = serving.generate(model, city, image_type, seed, n)
pictures = [generation.upscale(image, app.display_size, resampling) for image in images]

matches: list[novelty.Match] | None = None
real: novelty.RealSet | None = None
if app.nearest_real and card.dataset_id:
    with ui.problems_shown(settings):
        real = ui.real_set(settings, card.dataset_id)
        matches = novelty.nearest_real(ui.embedder(settings), images, real, settings.evaluate)

columns = st.columns(min(4, n))
for index, picture in enumerate(pictures):
    with columns[index % len(columns)]:
        st.image(
            generation.png_bytes(picture),
            caption=f"synthetic · seed {seed} · #{index}",
            output_format="PNG",
        )
        if matches is not None and real is not None:
            match = matches[index]
            near = generation.upscale(real.images[match.index], app.display_size, resampling)
            st.image(
                generation.png_bytes(near),
                caption=generation.match_caption(match, card),
                output_format="PNG",
            )
if matches is None:
    st.caption("Nearest real photos: not available (the model names no training set).")

st.download_button(
    "Download PNG",
    generation.grid_png(pictures),
    file_name=generation.download_name(city, image_type, seed, n),
    mime="image/png",
    icon=":material/download:",
    key="download",
)

st.subheader("Model")
st.table(generation.facts(card))
if card.run_url:
    st.link_button("Training run in MLflow", card.run_url, icon=":material/open_in_new:")
headline = generation.headline_metrics(card)
if headline:
    for column, (label, value) in zip(st.columns(len(headline)), headline.items(), strict=True):
        column.metric(label, f"{value:.3g}")
else:
    st.caption("No evaluation run logged for this model yet.")
rows = generation.metric_rows(card)
if rows:
    st.dataframe(
        {
            "from": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "value": [r[2] for r in rows],
        },
        hide_index=True,
    )
