"""A table's columns matched to a run's features by name: a run records the feature names of the
table it trained on, and every command that reads a table for it (evaluate --data, score, serve,
threshold) takes the columns by those names, in the run's order, whatever order the file has."""

from __future__ import annotations

from collections.abc import Sequence

from aecli.errors import DataError, clip, shorten


def feature_positions(given: Sequence[str], expected: Sequence[str] | None, what: str) -> list[int] | None:
    """The position in `given` (an input's feature names) of each of the run's features, in the
    run's order; None when the run recorded none (it trained on a table without a header: columns
    then match by position). A missing, renamed, extra or repeated name is a one-line DataError."""
    if expected is None:
        return None
    names = [name.strip() for name in given]
    if names == list(expected):
        return list(range(len(names)))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{what}: column {shorten(repeated[0])} appears more than once")
    missing = [name for name in expected if name not in names]
    unknown = [name for name in names if name not in expected]
    if missing or unknown:
        parts = ([f"missing {clip(', '.join(missing), 120)}"] if missing else []) + (
            [f"not in the run: {clip(', '.join(unknown), 120)}"] if unknown else []
        )
        raise DataError(
            f"{what}: its columns are not the features the run trained on ({'; '.join(parts)}); "
            f"the run's: {clip(', '.join(expected), 160)}"
        )
    return [names.index(name) for name in expected]
