"""A text run's vocabulary as saved in the run (vocabulary.tsv): the tokens in Keras's
TextVectorization order, and each token's inverse document frequency for tf_idf outputs.
numpy only, so reading one never loads TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aecli.atomic import write_text_atomic
from aecli.errors import DataError, clip

VOCABULARY_FILE = "vocabulary.tsv"
HEADER = "token\tidf"


@dataclass(frozen=True)
class Vocabulary:
    """Tokens without the padding and [UNK] entries Keras adds itself; `idf` per token (tf_idf only)."""

    tokens: list[str]
    idf: np.ndarray | None = None

    def write(self, path: Path) -> None:
        idf = self.idf if self.idf is not None else [math.nan] * len(self.tokens)
        lines = [HEADER, *(f"{token}\t{weight:.9g}" for token, weight in zip(self.tokens, idf, strict=True))]
        write_text_atomic(path, "\n".join(lines) + "\n")

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"data.text.vocabulary {path}: cannot read it ({clip(str(exc))})") from None
        if not lines or lines[0] != HEADER:
            raise DataError(f"data.text.vocabulary {path}: not a vocabulary file (expected the header {HEADER!r})")
        tokens: list[str] = []
        weights: list[float] = []
        for number, line in enumerate(lines[1:], start=2):
            token, sep, weight = line.rpartition("\t")
            try:
                value = float(weight)
            except ValueError:
                value = -1.0
            if not sep or not token or not (math.isnan(value) or value >= 0):
                raise DataError(f"data.text.vocabulary {path}: line {number} is not TOKEN<tab>IDF")
            tokens.append(token)
            weights.append(value)
        if len(set(tokens)) < len(tokens):
            raise DataError(f"data.text.vocabulary {path}: a token is listed twice; a vocabulary lists each once")
        if len(tokens) < 2:
            raise DataError(f"data.text.vocabulary {path}: holds {len(tokens)} token(s); a vocabulary needs 2")
        idf = np.array(weights, np.float32)
        return cls(tokens, None if np.isnan(idf).all() else idf)
