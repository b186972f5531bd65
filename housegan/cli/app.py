"""``housegan app``: the Streamlit app (generate, label, runs), headless on loopback."""

from __future__ import annotations

import argparse
import os

from housegan.config import get_settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app",
        help="run the Streamlit app: generate images, label photos, see runs",
        description="Serves the app on 127.0.0.1 (no browser is opened) until interrupted.",
    )
    parser.add_argument(
        "--model",
        help="the model to show: models:/NAME@ALIAS, models:/NAME/V or a model folder "
        "(default: settings app.model_uri, models:/housegan-cgan@champion)",
    )
    parser.add_argument("--port", type=int, help="default: settings app.port (8501)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from housegan.app import streamlit_args

    settings = get_settings().app
    port = args.port or settings.port
    env = dict(os.environ)
    if args.model:
        # The app reads its settings like every other command: through HOUSEGAN_* variables.
        env["HOUSEGAN_APP__MODEL_URI"] = args.model
    print(f"housegan app on http://{settings.host}:{port}  (Ctrl-C stops it)", flush=True)
    args = streamlit_args(settings.host, port)
    # Become the server: a signal meant for `housegan app` (Ctrl-C, a supervisor's SIGTERM) then
    # reaches Streamlit itself instead of orphaning it.
    os.execve(args[0], args, env)
    return 0  # not reached
