"""`make bench-full`, texts larger than memory: peak memory and speed of training on a text file
held in memory against the same file streamed, and on a file whose vectors would need 20 GB.

Data: the 11,498 sentences of ../shared/data/text/stsb/train.tsv, repeated in a new random order
each time, one per line (.txt). Model: configs/stsb_bow.yaml's (TF-IDF bags of 10,000 words, a
linear encoder to 256 dimensions, softmax over the words, xent) for one epoch at batch 256, in a
fresh `aecli train` process each (bench_streaming.measured_train: peak RSS from wait4).

    python benchmarks/bench_text_streaming.py [--small 50000] [--big 500000] [--out benchmarks/results]

Writes text_streaming.json and text_streaming.md (a BENCHMARKS.md section) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
STSB = ROOT.parent / "shared" / "data" / "text" / "stsb" / "train.tsv"
sys.path.insert(0, str(Path(__file__).parent))

from bench_streaming import measured_train  # noqa: E402

MAX_TOKENS = 10_000


def sentences() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from aecli.data.text import TextColumns, read_texts

    found = read_texts(str(STSB), TextColumns(["sentence1", "sentence2"]))
    return [" ".join(text.split()) for text in found.texts]


def write_texts(path: Path, count: int, texts: list[str]) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, count, len(texts)):
            order = rng.permutation(len(texts))[: min(len(texts), count - start)]
            handle.write("\n".join(texts[i] for i in order) + "\n")


def train(source: Path, workdir: Path, name: str, stream: bool | None) -> dict[str, Any]:
    text: dict[str, Any] = {"max_tokens": MAX_TOKENS, "output": "tf_idf"}
    if stream is not None:
        text["stream"] = stream
    config = {
        "data": {"source": str(source), "text": text, "test_split": 0.02},
        "model": {"kind": "bow", "encoder": [], "latent_dim": 256},
        "loss": "xent",
        "training": {"epochs": 1, "batch_size": 256, "checkpoint": {"best": False, "last": False}},
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    run, measured = measured_train(path, workdir, name)
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        **measured,
        "streamed": bool(info["data"].get("streamed")),
        "texts": info["data"]["texts"],
        "file_mib": source.stat().st_size / 2**20,
        "test_xent": metrics["reconstruction"]["xent"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=50_000)
    parser.add_argument("--big", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not STSB.is_file():
        raise SystemExit(f"needs the shared text data: {STSB}")
    texts = sentences()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aecli-bench-") as temp:
        workdir = Path(temp)
        for size, count in (("small", args.small), ("big", args.big)):
            write_texts(workdir / f"{size}.txt", count, texts)
        for name, size, stream in (
            ("small_in_memory", "small", False),
            ("small_streamed", "small", True),
            ("big_auto", "big", None),
        ):
            results[name] = train(workdir / f"{size}.txt", workdir, name, stream)
            print(name, results[name], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "text_streaming.json").write_text(json.dumps(results, indent=2))
    (args.out / "text_streaming.md").write_text(render(results, args))
    print(render(results, args))


def render(r: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "## Texts larger than memory (streamed text files)",
        "",
        f"Command: `python benchmarks/bench_text_streaming.py --small {args.small} --big {args.big}` (part of "
        "`make bench-full`). Data: the STS-B training sentences (../shared/data/text/stsb), repeated in a new "
        "random order each time, one per line; configs/stsb_bow.yaml's model (TF-IDF bags of 10,000 words, "
        "linear encoder to 256 dimensions, xent) for one epoch at batch 256 in a fresh `aecli train` process, "
        "the pass that adapts the vocabulary and the report over every split included; peak RSS of that process. "
        "Dense vectors: what the texts' float32 bags would take in memory.",
        "",
        "| data | read as | texts | file | dense vectors | peak RSS | whole run | epoch | texts/s | test xent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("small_in_memory", "held in memory (`stream: false`)"),
        ("small_streamed", "streamed (`stream: true`)"),
        ("big_auto", "streamed (unset: chosen by size)" if r["big_auto"]["streamed"] else "held in memory (unset)"),
    ):
        row = r[name]
        dense = row["texts"] * MAX_TOKENS * 4 / 2**30
        lines.append(
            f"| {row['texts']:,} sentences | {label} | {row['train_rows']:,} train | {row['file_mib']:.1f} MiB | "
            f"{dense:.1f} GiB | {row['peak_rss_mib']:,.0f} MiB | {row['wall_seconds']:.0f} s | "
            f"{row['epoch_seconds']:.1f} s | {row['samples_per_second']:,.0f} | {row['test_xent']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
