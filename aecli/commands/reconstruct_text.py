"""`aecli reconstruct` on a text run: each given text beside its noised version (a sequence
model's word noise: --noise, or the run's training.noise) and what the model makes of it: the
greedily decoded sentence (sequence models) or the likeliest words (bag-of-words models)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aecli.atomic import atomic_path
from aecli.config import NoiseConfig
from aecli.data.text import load_texts_for_model
from aecli.data.vocabulary import Vocabulary
from aecli.errors import DataError, EvaluationError
from aecli.runs import StagedOutputDir
from aecli.trained_run import TrainedRun, load_encoder, load_model

TOP_WORDS = 10  # a bag of words' reconstruction: its likeliest words


@dataclass
class TextReconstruction:
    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    mean_accuracy: float = 0.0  # share of tokens decoded right (sequence) or words recalled (bow)


def reconstruct_texts(run: TrainedRun, request: Any) -> TextReconstruction:
    from aecli.text_evaluation import word_recall
    from aecli.vectorizer import decode_tokens, vectorize

    texts, sources = _texts(run, request)
    text = run.data_config_for(run.config.data.source, [], "data").text
    assert text is not None and text.vocabulary is not None
    vocabulary = Vocabulary.read(text.vocabulary)
    clean = vectorize(texts, text, vocabulary)
    rows: list[dict[str, Any]] = []
    if run.config.model.kind == "sequence":
        noise = _noise(run, request.noise)
        fed = clean if noise is None else _corrupt(clean, noise, request.seed)
        decoded = greedy_decode(load_encoder(run.path), load_model(run.path / "decoder.keras", compile=False), fed)
        accuracy = _token_accuracy(clean, decoded)
        for index, (given, source) in enumerate(zip(texts, sources, strict=True)):
            shown = decode_tokens(clean[index : index + 1], vocabulary)[0]
            noised = decode_tokens(fed[index : index + 1], vocabulary)[0] if noise is not None else ""
            row = {"source": source, "input": given, "tokens": shown, "noised": noised}
            rows.append(row | {"decoded": decode_tokens(decoded[index : index + 1], vocabulary)[0]})
    else:  # bow, or a dense or vae model of bags of words: its output rates every word
        if request.noise and request.noise != "none":
            raise EvaluationError("--noise: a bag-of-words run takes no noise (word noise is for sequence models)")
        probabilities = np.asarray(load_model(run.path / "model.keras", compile=False).predict_on_batch(clean))
        accuracy = word_recall(probabilities, (clean > 0).astype(np.float64))
        words = np.array(["[UNK]", *vocabulary.tokens], dtype=object)
        for index, (given, source) in enumerate(zip(texts, sources, strict=True)):
            top = np.argsort(-probabilities[index])[:TOP_WORDS]
            rows.append({"source": source, "input": given, "top_words": " ".join(words[top[top < len(words)]])})
    for row, value in zip(rows, accuracy, strict=True):
        row["accuracy"] = float(value)
    staged = StagedOutputDir(request.out, run.path, "reconstruct")
    with staged as out_dir:
        _write(out_dir / "reconstructions.csv", rows)
    return TextReconstruction(staged.final or out_dir, rows, float(np.mean(accuracy)))


def _texts(run: TrainedRun, request: Any) -> tuple[np.ndarray, list[str]]:
    """--text strings, then every text of each INPUT file (read as the run reads texts)."""
    texts: list[str] = list(request.texts)
    sources = ["--text"] * len(texts)
    for path in request.inputs:
        cfg = run.data_config_for(str(path), request.data_overrides, "INPUT")
        try:
            found = load_texts_for_model(cfg, run.sample_shape, run.scaling)
        except DataError as exc:
            raise DataError(str(exc).replace("data.source", "INPUT", 1)) from None
        assert found.texts is not None
        texts += [str(given) for given in found.texts]
        sources += [f"{path.name}:{row + 1}" for row in range(len(found.texts))]
    if request.indices is not None:
        raise EvaluationError("--indices: for a text run, give the texts (--text or a file) instead")
    if not texts:
        raise EvaluationError('give texts to reconstruct: --text "..." (repeatable) or INPUT files')
    if any(not given.strip() for given in texts):
        raise EvaluationError("--text: an empty text has nothing to reconstruct")
    return np.array(texts, dtype=object), sources


def _noise(run: TrainedRun, spec: str | None) -> NoiseConfig | None:
    """--noise KIND:AMOUNT (word_deletion, word_mask, word_swap), none, or the run's own word noise."""
    if spec is None:
        return run.config.training.noise
    if spec == "none":
        return None
    kind, _, amount = spec.partition(":")
    try:
        return NoiseConfig.model_validate({"kind": kind, "amount": float(amount)})
    except ValueError:
        raise EvaluationError(
            f"--noise {spec!r}: a sequence model takes word_deletion:P, word_mask:P or word_swap:P (P in (0, 1]), "
            "or none"
        ) from None


def _corrupt(tokens: np.ndarray, noise: NoiseConfig, seed: int) -> np.ndarray:
    from aecli.text_layers import WordNoise

    if noise.kind not in ("word_deletion", "word_mask", "word_swap"):
        raise EvaluationError(f"--noise {noise.kind}: a sequence model takes word_deletion, word_mask or word_swap")
    layer = WordNoise(noise.kind, noise.amount, seed=seed)
    return np.asarray(layer(tokens, training=True), np.float32)


def greedy_decode(encoder: Any, decoder: Any, tokens: np.ndarray) -> np.ndarray:
    """The likeliest word at each position given the code and the words decoded before it,
    until the end of the sentence (padding) is the likeliest."""
    codes = np.asarray(encoder.predict_on_batch(tokens))
    decoded = np.zeros_like(tokens)
    finished = np.zeros(len(tokens), bool)
    for position in range(tokens.shape[1]):
        logits = np.asarray(decoder.predict_on_batch([codes, decoded]))
        chosen = np.argmax(logits[:, position], axis=-1)
        decoded[:, position] = np.where(finished, 0, chosen)
        finished |= chosen == 0
        if finished.all():
            break
    return decoded


def _token_accuracy(clean: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    from aecli.text_layers import token_mask

    mask = np.asarray(token_mask(clean))
    return ((decoded == clean) * mask).sum(axis=1) / mask.sum(axis=1)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
