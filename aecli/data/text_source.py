"""The text source kind: texts held in memory (data/text.py) or, when their vectors would not
fit, streamed a block at a time (data/text_stream.py)."""

from __future__ import annotations

from aecli.data.source_kind import SourceKind
from aecli.data.text import load_text_dataset, load_texts_for_model, refuse_raw, text_sample_shape
from aecli.data.text_stream import open_streamed_texts, streams_texts

SOURCE_KIND = SourceKind(
    "text",
    claims=lambda request: request.text is not None,
    read=refuse_raw,
    stream=open_streamed_texts,
    streams=streams_texts,
    sample_shape=text_sample_shape,
    load=load_text_dataset,
    load_for_model=load_texts_for_model,
)
