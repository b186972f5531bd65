"""The Streamlit-specific pieces the pages share: cached loads and problems shown as messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import streamlit as st

from housegan.app import generation, novelty
from housegan.app.problems import explain
from housegan.config import EmbedSettings, Settings, get_settings


def settings() -> Settings:
    return get_settings()


@contextmanager
def problems_shown(current: Settings) -> Iterator[None]:
    """A problem a user can hit (see ``problems.explain``) becomes ``st.info``/``st.error`` and
    ends this page's run; anything else (a bug) keeps its traceback."""
    try:
        yield
    except Exception as exc:
        problem = explain(exc, current)
        if problem is None:
            raise
        (st.info if problem.level == "info" else st.error)(problem.message)
        st.stop()


@st.cache_resource(show_spinner="Loading the model...", max_entries=4)
def model(load_uri: str, tracking_uri: str, device: str) -> Any:
    """One generator per model version: kept across reruns and sessions."""
    return generation.load_model(load_uri, tracking_uri, device)


@st.cache_resource(show_spinner="Building the embedder...", max_entries=1)
def _embedder(cfg_json: str, options_json: str) -> Any:
    cfg = EmbedSettings.model_validate_json(cfg_json)
    return novelty.build_embedder(cfg, json.loads(options_json))


def embedder(current: Settings) -> Any:
    """The curation embedder, built once per process."""
    return _embedder(current.embed.model_dump_json(), options_json(current))


@st.cache_resource(show_spinner="Embedding the training set (once; cached)...", max_entries=2)
def _real_set(
    store_uri: str, dataset_id: str, cfg_json: str, options_json: str, cache: bool
) -> Any:
    return novelty.load_real_set(
        store_uri, dataset_id, _embedder(cfg_json, options_json), cache, json.loads(options_json)
    )


def real_set(current: Settings, dataset_id: str) -> novelty.RealSet:
    """The training set ``dataset_id`` with its features: loaded once per process, embedded
    once per store (the evaluation's feature cache)."""
    return _real_set(
        current.store_uri,
        dataset_id,
        current.embed.model_dump_json(),
        options_json(current),
        current.evaluate.cache_features,
    )


@st.cache_data(show_spinner=False, max_entries=8)
def curated(uri: str, options_json: str) -> Any:
    """A curated manifest version (immutable: cached by its URI)."""
    from housegan.app import labelling

    return labelling.read_curated(uri, json.loads(options_json))


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnail(uri: str, max_side: int, options_json: str) -> bytes:
    from housegan.app import labelling

    return labelling.thumbnail_png(uri, max_side, json.loads(options_json))


def options_json(current: Settings) -> str:
    return json.dumps(current.storage_options(), sort_keys=True)
