"""`make bench`, texts: each shipped text config trained with `aecli train`, its embeddings scored
by `aecli evaluate` beside TF-IDF and LSA at the same dimension (fitted on the run's training
texts), and `aecli embed`'s throughput beside scikit-learn's TF-IDF + SVD transform.

    python benchmarks/bench_text.py [--quick] [--out benchmarks/results]

BBC (../shared/data/text/bbc): aecli evaluate's k-means NMI (5 clusters) and 5-NN accuracy on
every one of the 1,249 articles (`--data` the whole file).
STS-B (../shared/data/text/stsb/train.tsv): trained on the 11,498 sentences of its pairs,
scored by the Spearman correlation of the cosine of each pair's embeddings with the gold score
(`--pairs`). `--quick` trains the bag-of-words configs and keeps the sequence model's row from
the last full run (marked *). Writes text.json and text.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "text"
BBC = SHARED / "bbc" / "bbc-text.csv"
STSB = SHARED / "stsb" / "train.tsv"
CASES = (
    ("bbc_bow.yaml", "bbc", "bag of words, TF-IDF in, softmax over the words out"),
    ("stsb_bow.yaml", "stsb", "bag of words, TF-IDF in, softmax over the words out"),
    ("stsb_tsdae.yaml", "stsb", "TSDAE: Transformer encoder (mean pooling) and decoder, 60% word deletion"),
)
SLOW = {"stsb_tsdae.yaml"}  # left out of --quick


def aecli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "aecli", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done


def measure(config: str, data: str, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    run = Path(aecli("train", ROOT / "configs" / config, "--runs-dir", folder, "--quiet").stdout.split()[-1])
    train_seconds = time.perf_counter() - started
    evaluation = folder / f"eval-{config}"
    if data == "bbc":
        aecli("evaluate", run, "--data", BBC, "--out", evaluation)
    else:
        aecli("evaluate", run, "--pairs", STSB, "--out", evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    fit = json.loads((run / "metrics.json").read_text())["training"]
    return {
        "config": config,
        "data": data,
        "parameters": json.loads((run / "run.json").read_text())["model"]["parameters"],
        "latent_dim": _latent_dim(run),
        "train_seconds": train_seconds,
        "fit_seconds": fit["wall_seconds"],
        "epochs": fit["epochs_run"],
        "quality": metrics["latent"] if data == "bbc" else metrics["pairs"],
        "embed": embed_throughput(run, data),
    }


def _latent_dim(run: Path) -> int:
    import yaml

    return int(yaml.safe_load((run / "config.yaml").read_text())["model"]["latent_dim"])


def embed_throughput(run: Path, data: str) -> dict[str, float]:
    """Texts per second through aecli embed's path (read, vectorize, encode, write .npy), in this
    process after one warm-up call, and through scikit-learn's TF-IDF + SVD transform."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    from aecli.backend import select_backend
    from aecli.commands.embed_text import embed_texts
    from aecli.data.text import TextColumns, read_texts
    from aecli.trained_run import load_encoder, open_trained_run

    columns = TextColumns("text") if data == "bbc" else TextColumns(["sentence1", "sentence2"])
    texts = read_texts(str(BBC if data == "bbc" else STSB), columns).texts
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "texts.txt"
        source.write_text("\n".join(" ".join(text.split()) for text in texts) + "\n", encoding="utf-8")
        trained = open_trained_run(run)
        select_backend(trained.config.runtime.backend)
        cfg = trained.data_config_for(str(source), [], "embed")
        encoder = load_encoder(run)
        embed_texts(cfg, encoder, Path(scratch) / "warm.npy", 4096, None)
        started = time.perf_counter()
        rows, _ = embed_texts(cfg, encoder, Path(scratch) / "codes.npy", 4096, None)
        aecli_rate = rows / (time.perf_counter() - started)
    tfidf = TfidfVectorizer().fit(texts)
    svd = TruncatedSVD(_latent_dim(run), random_state=0).fit(tfidf.transform(texts))
    started = time.perf_counter()
    svd.transform(tfidf.transform(texts))
    lsa_rate = len(texts) / (time.perf_counter() - started)
    return {"texts": len(texts), "aecli_per_second": aecli_rate, "lsa_per_second": lsa_rate}


def render(results: list[dict[str, Any]]) -> str:
    lines = [
        "## Texts: embedding quality against TF-IDF and LSA, training time, embed throughput",
        "",
        "`python benchmarks/bench_text.py` (`--quick` in `make bench`: the bag-of-words configs; rows marked * "
        "are from the last full run). Baselines: scikit-learn's TfidfVectorizer and LSA (TF-IDF + TruncatedSVD "
        "at the embedding's dimension), fitted on the run's training texts. BBC: every one of the 1,249 "
        "articles, embeddings at unit length; STS-B: Spearman of the cosine of each of the 5,749 training pairs "
        "against the gold score (the model trained on the pairs' sentences without the scores). Embed: texts/s "
        "through aecli embed's path (read, vectorize, encode, write .npy) against scikit-learn's TF-IDF + SVD "
        "transform of the same texts.",
        "",
        "| config | model | data | dims | quality: aecli | TF-IDF | LSA, same dims | train wall (s) | epochs "
        "| embed texts/s | TF-IDF+SVD texts/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = {config: model for config, _, model in CASES}
    for row in results:
        cells = [_quality(row, name) for name in ("autoencoder", "tf-idf", f"lsa-{row['latent_dim']}")]
        mark = "*" if row.get("kept") else ""
        embed = row["embed"]
        lines.append(
            f"| {row['config']}{mark} | {models[row['config']]} | {row['data']} | {row['latent_dim']} | "
            + " | ".join(cells)
            + f" | {row['train_seconds']:.0f} | {row['epochs']} | {embed['aecli_per_second']:,.0f} "
            f"| {embed['lsa_per_second']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def _quality(row: dict[str, Any], name: str) -> str:
    quality = row["quality"].get(name)
    if quality is None:
        return "n/a"
    if row["data"] == "bbc":
        return f"NMI {quality['kmeans_nmi']:.3f} / 5-NN {quality['knn_accuracy']:.3f}"
    return f"Spearman {quality['spearman']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="the bag-of-words configs only; keep the others' rows")
    parser.add_argument("--render", action="store_true", help="only rewrite text.md from text.json")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.render:
        (args.out / "text.md").write_text(render(json.loads((args.out / "text.json").read_text())))
        return
    if not BBC.is_file() or not STSB.is_file():
        raise SystemExit(f"needs the shared text data: {BBC} and {STSB}")
    args.out.mkdir(parents=True, exist_ok=True)
    saved_path = args.out / "text.json"
    saved = {row["config"]: row for row in json.loads(saved_path.read_text())} if saved_path.is_file() else {}
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for config, data, _ in CASES:
            if args.quick and config in SLOW:
                if config in saved:
                    results.append({**saved[config], "kept": True})
                continue
            print(f"{config} ...", flush=True)
            results.append(measure(config, data, Path(folder)))
            print(json.dumps(results[-1]["quality"]), flush=True)
    saved_path.write_text(json.dumps([{k: v for k, v in r.items() if k != "kept"} for r in results], indent=1))
    (args.out / "text.md").write_text(render(results))
    print((args.out / "text.md").read_text())


if __name__ == "__main__":
    main()
