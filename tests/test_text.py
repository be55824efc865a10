"""Texts: sources, vectorization, bag-of-words and sequence models, embed and evaluate."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from aecli.config import validate_config
from aecli.data.text import TextColumns, read_texts
from aecli.errors import ConfigError, DataError

TOPICS = {
    "pets": ["cat", "dog", "kitten", "puppy", "fur", "leash", "bowl", "purr"],
    "money": ["bank", "loan", "market", "shares", "profit", "cash", "price", "trade"],
    "sport": ["goal", "match", "team", "score", "league", "coach", "ball", "win"],
}


def corpus(count: int = 150, seed: int = 0) -> list[tuple[str, str]]:
    """(text, topic) pairs: each text a few words of its topic and a few common words."""
    rng = np.random.default_rng(seed)
    common = ["the", "a", "and", "of", "today", "big", "new"]
    rows = []
    for index in range(count):
        topic = list(TOPICS)[index % len(TOPICS)]
        words = list(rng.choice(TOPICS[topic], 4)) + list(rng.choice(common, 2))
        rng.shuffle(words)
        rows.append((" ".join(words), topic))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "topic"])
        writer.writerows(rows)
    return path


def text_config(tmp_path: Path, source: Path, model: dict[str, Any], **sections: Any) -> Path:
    data = {"source": str(source), "text_column": "text", "label_column": "topic", "text": {"max_tokens": 64}}
    data.update(sections.pop("data", {}))
    config = {
        "data": data,
        "model": model,
        "optimizer": {"name": "adam", "learning_rate": 0.01},
        "training": {"epochs": 2, "batch_size": 16, **sections.pop("training", {})},
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_text_sources_read_every_layout_and_name_the_bad_line(tmp_path: Path) -> None:
    rows = corpus(6)
    write_csv(tmp_path / "t.csv", rows)
    found = read_texts(str(tmp_path / "t.csv"), TextColumns("text", "topic"))
    assert list(found.texts) == [text for text, _ in rows] and found.labels == [topic for _, topic in rows]
    (tmp_path / "t.tsv").write_text('a\tb\tscore\nhe said "hi\tshe left\t3.5\n', encoding="utf-8")
    found = read_texts(str(tmp_path / "t.tsv"), TextColumns(["a", "b"], None, "score"))
    assert list(found.texts) == ['he said "hi', "she left"] and list(found.ids) == ["3.5", "3.5"]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"body": t, "y": y}) for t, y in rows) + "\n")
    assert len(read_texts(str(tmp_path / "t.jsonl"), TextColumns("body", "y")).texts) == 6
    (tmp_path / "t.txt").write_text("one text\nanother text\n")
    assert list(read_texts(str(tmp_path / "t.txt"), TextColumns(None)).texts) == ["one text", "another text"]

    cases = {
        "empty.txt": (b"first\n\nthird\n", "line 2: the text is empty"),
        "latin.txt": ("caf\u00e9\n".encode("latin-1"), "line 1 is not UTF-8"),
        "binary.txt": (b"ok\n\x00\x01\x02", "line 2 holds a NUL byte"),
        "nothing.txt": (b"", "holds no texts"),
        "wide.txt": ("one\ntwo\n".encode("utf-16"), "UTF-16 text; convert it to UTF-8"),
        "short.csv": (b"text,topic\nfine,a\nmissing\n", "line 3 has 1 columns"),
        "bad.jsonl": (b'{"text": "x"}\nnot json\n', "line 2 is not a JSON record"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        columns = TextColumns(None) if name.endswith(".txt") else TextColumns("text")
        with pytest.raises(DataError, match=message):
            read_texts(str(tmp_path / name), columns)
    with pytest.raises(DataError, match="no column 'body'"):
        read_texts(str(tmp_path / "t.csv"), TextColumns("body"))


def test_text_config_pairs_kinds_losses_and_noises() -> None:
    text = {"source": "x.txt", "text": True}
    sequence = validate_config({"data": text, "model": {"kind": "sequence"}})
    assert sequence.data.text is not None and sequence.data.text.output == "tokens"
    assert sequence.loss.name == "xent" and sequence.anomaly.score == "xent"
    bow = validate_config({"data": text, "model": {"kind": "bow"}, "loss": "xent"})
    assert bow.model.output_activation == "softmax" and bow.data.text is not None and bow.data.text.output == "tf_idf"
    refused = {
        "model.kind: bow models texts": {"model": {"kind": "bow"}},
        "tokens are read by model.kind sequence": {"data": {**text, "text": {"output": "tokens"}}},
        "a sequence model takes word_deletion": {
            "data": text,
            "model": {"kind": "sequence"},
            "training": {"noise": {"kind": "gaussian"}},
        },
        "word_swap corrupts token sequences": {
            "data": text,
            "model": {"kind": "bow"},
            "training": {"noise": "word_swap"},
        },
        "conv does not apply to texts": {"data": text, "model": {"kind": "conv"}},
        "text_column: applies to text sources": {"data": {"source": "x.csv", "text_column": "a"}},
    }
    for message, raw in refused.items():
        if raw.get("training", {}).get("noise") == "word_swap":
            raw["training"]["noise"] = {"kind": "word_swap"}
        with pytest.raises(ConfigError, match=message):
            validate_config(raw)


def test_word_noise_deletes_masks_and_swaps_only_words() -> None:
    from aecli.text_layers import WordNoise

    tokens = np.array([[5, 6, 7, 8, 9, 0, 0, 0]] * 64, np.float32)
    deleted = np.asarray(WordNoise("word_deletion", 0.6, seed=1)(tokens, training=True))
    kept = (deleted > 0).sum(axis=1)
    assert kept.min() >= 1 and 1.0 < kept.mean() < 3.5  # about 40% of 5 words survive
    for row in deleted:  # the survivors keep their order, padding stays at the end
        words = row[row > 0]
        assert list(words) == sorted(words) and (row[len(words) :] == 0).all()
    masked = np.asarray(WordNoise("word_mask", 0.5, seed=1)(tokens, training=True))
    assert set(np.unique(masked[:, :5])) <= {1, 5, 6, 7, 8, 9} and (masked[:, 5:] == 0).all()
    swapped = np.asarray(WordNoise("word_swap", 0.5, seed=1)(tokens, training=True))
    assert (np.sort(swapped[:, :5], axis=1) == tokens[:, :5]).all() and (swapped != tokens).any()
    assert (np.asarray(WordNoise("word_deletion", 0.6)(tokens, training=False)) == tokens).all()


@pytest.mark.slow
def test_bow_run_trains_embeds_and_beats_nothing_silently(tmp_path: Path, cli: Callable[..., Any]) -> None:
    source = write_csv(tmp_path / "topics.csv", corpus(150))
    config = text_config(tmp_path, source, {"kind": "bow", "encoder": [], "latent_dim": 4}, training={"epochs": 30})
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    assert (run / "vocabulary.tsv").read_text().startswith("token\tidf\n")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_errors"]["score"] == "xent" and 0 < metrics["reconstruction"]["word_recall"] <= 1

    (tmp_path / "new.txt").write_text("the cat and the dog\nbank loan profit\n")
    result = cli("embed", run, tmp_path / "new.txt", "--out", tmp_path / "codes.npy")
    assert result.exit_code == 0, result.output
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (2, 4)
    from aecli.data.vocabulary import Vocabulary
    from aecli.trained_run import load_encoder
    from aecli.vectorizer import vectorize

    text = validate_config(yaml.safe_load(config.read_text())).data.text
    assert text is not None
    dense = vectorize(
        np.array(["the cat and the dog", "bank loan profit"], object), text, Vocabulary.read(run / "vocabulary.tsv")
    )
    assert np.allclose(codes, load_encoder(run).predict_on_batch(dense), atol=1e-5)  # embed's sparse path: same codes

    result = cli("evaluate", run, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(evaluation["latent"]) == {"autoencoder", "tf-idf", "lsa-4"}
    assert evaluation["latent"]["autoencoder"]["knn_accuracy"] > 0.6  # three topics apart
    assert "Nearest neighbours" in (tmp_path / "eval" / "report.html").read_text()
    refused = {
        ("embed", "--set", "data.text.max_tokens=50"): "reads texts with the run's own vectorizer",
        ("evaluate", "--normal-classes", "cars"): "none occur in the labels (present: 'money', 'pets', 'sport')",
        ("evaluate", "--pairs", source): "--pair-columns: no column 'sentence1'",
    }
    for (command, *options), message in refused.items():
        extra = [tmp_path / "new.txt", "--out", tmp_path / "x.npy"] if command == "embed" else []
        result = cli(command, run, *extra, *options)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    result = cli("evaluate", run, "--normal-classes", "pets,money", "--out", tmp_path / "anomalies")
    assert result.exit_code == 0, result.output
    anomaly = json.loads((tmp_path / "anomalies" / "metrics.json").read_text())["anomaly"]
    assert set(anomaly) == {"autoencoder", "tf-idf", "lsa-4"} and anomaly["autoencoder"]["n_anomalies"] > 0
    assert all(0 <= table["auroc"] <= 1 for table in anomaly.values())

    vocabulary = (run / "vocabulary.tsv").read_text()
    (run / "vocabulary.tsv").write_text(vocabulary.replace("\tcat\t", "\tcow\t").replace("\ncat\t", "\ncow\t"))
    result = cli("embed", run, tmp_path / "new.txt", "--out", tmp_path / "y.npy")
    assert result.exit_code == 2 and "vocabulary.tsv is missing or changed since training" in result.output
    (run / "vocabulary.tsv").write_text(vocabulary)

    result = cli("reconstruct", run, "--text", "cat dog kitten puppy", "--out", tmp_path / "rec")
    assert result.exit_code == 0, result.output
    with (tmp_path / "rec" / "reconstructions.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert len(set(row["top_words"].split()) & {"cat", "dog", "kitten", "puppy", "fur", "leash", "bowl", "purr"}) >= 3


@pytest.mark.slow
def test_sequence_run_denoises_and_its_encoder_embeds_raw_strings(tmp_path: Path, cli: Callable[..., Any]) -> None:
    source = write_csv(tmp_path / "topics.csv", corpus(120))
    model = {"kind": "sequence", "embedding_dim": 16, "encoder": [16], "decoder": [16], "latent_dim": 8}
    sections = {"data": {"text": {"max_tokens": 64, "sequence_length": 5}}, "training": {"noise": "word_deletion"}}
    sections["training"] = {"noise": {"kind": "word_deletion", "amount": 0.5}}
    config = text_config(tmp_path, source, model, **sections)
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    notes = json.loads((run / "run.json").read_text())["data"]["notes"]
    assert any("120 of 120 texts have more than data.text.sequence_length (5)" in note for note in notes)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["reconstruction"]["token_accuracy"] <= 1 and metrics["reconstruction"]["perplexity"] > 1

    import keras
    import tensorflow as tf

    encoder = keras.saving.load_model(run / "encoder.keras")  # plain Keras: the vectorizer is inside
    codes = np.asarray(encoder(tf.constant(["the cat sat", "bank loan"])))
    assert codes.shape == (2, 8)

    pairs = tmp_path / "pairs.tsv"
    lines = ["sentence1\tsentence2\tscore"]
    lines += [
        f"{a}\t{b}\t{score}" for (a, _), (b, _), score in zip(corpus(10), corpus(10, seed=1), range(10), strict=True)
    ]
    pairs.write_text("\n".join(lines) + "\n")
    result = cli("evaluate", run, "--pairs", pairs, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluation["pairs"]["n_pairs"] == 10 and -1 <= evaluation["pairs"]["autoencoder"]["spearman"] <= 1
    result = cli("reconstruct", run, "--text", "the cat sat", "--noise", "word_mask:1", "--out", tmp_path / "rec")
    assert result.exit_code == 0, result.output
    with (tmp_path / "rec" / "reconstructions.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["tokens"] == "the cat [UNK]" and row["noised"] == "[UNK] [UNK] [UNK]" and row["decoded"]
    result = cli("embed", run, tmp_path / "missing.txt", "--out", tmp_path / "c.npy")
    assert result.exit_code == 2 and "no such file" in result.output and not (tmp_path / "c.npy").exists()


@pytest.mark.slow
def test_one_word_vocabulary_is_a_one_line_error(tmp_path: Path, cli: Callable[..., Any]) -> None:
    for rows in ([("word", "a")] * 20, [("!!! ???", "a")] * 20):  # one word; no word at all (tf_idf)
        source = write_csv(tmp_path / "one.csv", rows)
        config = text_config(tmp_path, source, {"kind": "bow", "encoder": [], "latent_dim": 2})
        result = cli("train", config, "--runs-dir", tmp_path / "runs", "--quiet")
        assert result.exit_code == 2 and "a vocabulary needs at least 2" in result.output, result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_sentence_vae_adds_an_annealed_kl_term_and_encodes_to_its_mean() -> None:
    from aecli.models import TextModelInput, build_autoencoder

    config = validate_config(
        {
            "data": {"source": "x.txt", "text": {"max_tokens": 40, "sequence_length": 6}},
            "model": {
                "kind": "sequence",
                "variational": True,
                "beta": 0.5,
                "beta_warmup_steps": 4,
                "word_dropout": 0.3,
                "embedding_dim": 8,
                "encoder": [8],
                "decoder": [8],
                "latent_dim": 4,
            },
        }
    )
    autoencoder = build_autoencoder(config.model, (6,), text=TextModelInput(40))
    tokens = np.array([[5, 6, 7, 0, 0, 0], [8, 9, 10, 11, 0, 0]], np.float32)
    codes = np.asarray(autoencoder.encoder(tokens))
    assert np.allclose(codes, np.asarray(autoencoder.encoder(tokens)))  # inference: the mean, no sampling
    kl = []
    for _ in range(6):
        autoencoder.model(tokens, training=True)
        kl.append(float(sum(float(np.asarray(loss)) for loss in autoencoder.model.losses)))
    assert kl[0] == 0.0 and kl[1] > 0.0  # beta rises from 0 over the first 4 steps (KL annealing)
    assert {layer.name for layer in autoencoder.decoder.layers} >= {"word_dropout"}


def test_adapting_on_blocks_of_a_stream_equals_keras_tf_idf_adapt() -> None:
    import keras

    from aecli.config import TextConfig
    from aecli.vectorizer import adapt_vocabulary

    texts = np.array([text for text, _ in corpus(300)], dtype=object)
    text = TextConfig(max_tokens=12, ngrams=2)  # fewer than the words: the most frequent are kept, in order
    streamed = adapt_vocabulary(iter([texts[:7], texts[7:150], texts[150:]]), text, lambda: iter([texts]))
    keras_own = keras.layers.TextVectorization(max_tokens=12, ngrams=2, output_mode="tf_idf")
    keras_own.adapt(texts.astype(str), batch_size=64)
    assert streamed.tokens == keras_own.get_vocabulary()[1:] and len(streamed.tokens) == 11
    idf = np.asarray(keras_own._lookup_layer.idf_weights_const)[1:]
    assert streamed.idf is not None and np.allclose(streamed.idf, idf, rtol=1e-6)
    assert adapt_vocabulary(texts, text).tokens == streamed.tokens  # the in-memory path: the same


def test_texts_stream_when_their_vectors_would_not_fit_in_memory(tmp_path: Path, monkeypatch: Any) -> None:
    from aecli.data import is_streamed, text, text_stream

    source = write_csv(tmp_path / "c.csv", corpus(200))
    raw = {"source": str(source), "text_column": "text", "text": {"max_tokens": 64}}
    cfg = validate_config({"data": raw, "model": {"kind": "bow"}}).data
    vectors = 200 * 64 * 4  # the estimate: the file's size over its lines' mean size, times the width
    monkeypatch.setattr(text_stream, "memory_bytes", lambda: 4 * vectors * 2)
    assert not is_streamed(cfg)
    monkeypatch.setattr(text_stream, "memory_bytes", lambda: 4 * vectors // 2)
    assert is_streamed(cfg)
    assert not is_streamed(cfg.model_copy(update={"limit": 50}))  # data.limit bounds what is read
    held = validate_config({"data": {**raw, "text": {"max_tokens": 64, "stream": False}}, "model": {"kind": "bow"}})
    assert not is_streamed(held.data)
    monkeypatch.setattr(text, "memory_bytes", lambda: vectors)
    with pytest.raises(DataError, match="train with data.text.stream: true, or use data.text.max_tokens of at most"):
        text.load_text_dataset(held.data, seed=0)


@pytest.mark.slow
def test_a_streamed_text_run_keeps_its_parts_apart_and_evaluate_agrees(
    tmp_path: Path, cli: Callable[..., Any], monkeypatch: Any
) -> None:
    from aecli.data import text_stream

    monkeypatch.setattr(text_stream, "TEXT_BLOCK", 64)  # many blocks, each read and hashed on its own
    rows = corpus(600)
    source = write_csv(tmp_path / "c.csv", rows)
    data = {"text": {"max_tokens": 64, "stream": True}, "validation_split": 0.1, "classes": ["pets", "money"]}
    model = {"kind": "bow", "encoder": [16], "latent_dim": 4}
    result = cli("train", text_config(tmp_path, source, model, data=data), "--runs-dir", tmp_path / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    run = Path(result.stdout.strip().splitlines()[-1])
    recorded = json.loads((run / "run.json").read_text())["data"]
    assert recorded["streamed"] and recorded["texts"] == 600 and (run / "vocabulary.tsv").exists()

    def table(name: str) -> list[dict[str, str]]:
        with (run / name).open() as handle:
            return list(csv.DictReader(handle))

    parts = {name: table(name) for name in ("errors.csv", "train_errors.csv", "val_errors.csv")}
    seen = {name: {int(row["source_row"]) for row in found} for name, found in parts.items()}
    assert [len(seen[name]) for name in seen] == [recorded[part] for part in ("test", "train", "validation")]
    assert not (seen["errors.csv"] & seen["train_errors.csv"] or seen["train_errors.csv"] & seen["val_errors.csv"])
    assert 90 <= recorded["test"] <= 150  # about data.test_split's 0.2, decided text by text
    for name in ("train_errors.csv", "val_errors.csv"):  # data.classes filters training texts only
        assert {row["label"] for row in parts[name]} == {"pets", "money"}
        assert all(rows[int(row["source_row"])][1] == row["label"] for row in parts[name])
    assert {row["label"] for row in parts["errors.csv"]} == {"pets", "money", "sport"}

    result = cli("evaluate", run, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    trained = json.loads((run / "metrics.json").read_text())
    assert evaluation["n_samples"] == recorded["test"]  # the texts training held out, no others
    assert evaluation["reconstruction"]["xent"] == pytest.approx(trained["reconstruction"]["xent"], rel=1e-5)


def test_a_bad_line_deep_in_a_streamed_file_is_refused_before_a_run_exists(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    rows = corpus(300)
    source = write_csv(tmp_path / "c.csv", rows)
    source.write_text(source.read_text().replace(f"{rows[250][0]},", ",", 1))  # line 252: no text
    data = {"text": {"max_tokens": 64, "stream": True}}
    config = text_config(tmp_path, source, {"kind": "bow", "latent_dim": 4}, data=data)
    result = cli("train", config, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "line 252: the text is empty" in result.output, result.output
    assert "Traceback" not in result.output and not list((tmp_path / "runs").glob("*"))
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--set", "optimizer.name=gd")
    assert result.exit_code == 2 and "which streamed data (a shard folder, a large text file)" in result.output
    result = cli("train", config, "--runs-dir", tmp_path / "runs", "--set", "data.limit=1")  # not "0 words"
    assert result.exit_code == 2 and "1 texts are too few to split off a test set" in result.output, result.output


def test_a_long_text_costs_its_own_length_not_every_texts(tmp_path: Path) -> None:
    import tracemalloc

    from aecli.config import TextConfig
    from aecli.vectorizer import adapt_vocabulary, vectorize

    texts = np.array(["word " * 40_000] + [text for text, _ in corpus(999)], dtype=object)  # one of 200 kB
    text = TextConfig(max_tokens=64)
    tracemalloc.start()
    vectorize(texts, text, adapt_vocabulary(texts, text))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 100 * 2**20  # numpy's fixed-width str would pad all 1,000 texts to 200 kB: 800 MB


def test_a_streamed_file_that_changes_between_passes_is_refused(tmp_path: Path) -> None:
    from aecli.data.text_stream import open_streamed_texts

    source = write_csv(tmp_path / "c.csv", corpus(120))
    raw = {"source": str(source), "text_column": "text", "text": {"max_tokens": 64, "stream": True}}
    streamed = open_streamed_texts(validate_config({"data": raw, "model": {"kind": "bow"}}).data, seed=0)
    assert sum(len(texts) for texts, _, _ in streamed.text_blocks("train")) == streamed.counts["train"]
    with source.open("a") as handle:
        handle.write("one more text,pets\n")
    with pytest.raises(DataError, match="changed while training read it"):
        next(streamed.text_blocks("train"))


def test_bags_counted_from_token_ids_equal_keras_own_bags() -> None:
    from aecli.config import TextConfig
    from aecli.vectorizer import adapt_vocabulary, text_vectorization, vectorize

    texts = np.array([text for text, _ in corpus(300)] + ["zzz unseen words", "Cat, DOG! the the the"], dtype=object)
    for output in ("tf_idf", "count", "multi_hot"):
        # a vocabulary cut short (unknown words counted as [UNK]), a roomy one, and word pairs
        for max_tokens, ngrams in ((12, 1), (64, 1), (40, 2)):
            text = TextConfig(max_tokens=max_tokens, output=output, ngrams=ngrams)
            vocabulary = adapt_vocabulary(texts[:300], text)
            keras_own = np.asarray(text_vectorization(text, vocabulary)(texts.astype(str)))
            assert np.array_equal(vectorize(texts, text, vocabulary), keras_own), (output, max_tokens, ngrams)
            assert keras_own[-2, 0] > 0  # the unseen words landed in [UNK]'s column
