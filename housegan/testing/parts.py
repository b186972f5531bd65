"""A small score table for tests of the storage layer's collections."""

from __future__ import annotations

import pyarrow as pa

SCORE_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("score", pa.int64()),
        pa.field("status", pa.string()),
    ]
)


def score_rows(*triples: tuple[str, int, str]) -> pa.Table:
    """A table of (sha256, score, status) rows."""
    sha256s, scores, statuses = zip(*triples, strict=True)
    return pa.table(
        {"sha256": list(sha256s), "score": list(scores), "status": list(statuses)},
        schema=SCORE_SCHEMA,
    )


def scores_by_key(table: pa.Table) -> dict[str, int]:
    """sha256 -> score of a table of score rows."""
    return dict(zip(table["sha256"].to_pylist(), table["score"].to_pylist(), strict=True))
