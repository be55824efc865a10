"""Property-based fuzzing of every input boundary: YAML configs and `--set` overrides, data files
(IDX raw and .gz, .npy, .npz, .csv), saved `.keras` models and image files.

The property is the same everywhere: a valid input loads, and anything else is an `AecliError`
whose message is one line of bounded length, raised in bounded time; never another exception.
What loads must also be usable: a config's floats fit float32, its seed is one numpy takes, no
repeated key was silently dropped, and its saved config.yaml loads back to the same config; data
that loads scales to finite values, its training split into [0, 1].

The default budget runs the file in about 30 s on 2 cores (less once nothing fails: shrinking a
failure costs most of it), with a fixed seed per test (`derandomize`). `AECLI_FUZZ_EXAMPLES=2000`
runs that many examples in each cheap test and a share of them in the costly ones (subprocesses,
Keras loads).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import math
import os
import pickle
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel
from typer.testing import CliRunner

from aecli.cli import app
from aecli.config import AecliConfig, DataConfig, config_to_yaml, dump_config, load_config
from aecli.data import RawData, load_dataset, read_source
from aecli.errors import AecliError, ConfigError, DataError, RunError

T = TypeVar("T")

# ----------------------------------------------------------------------------------------------
# Budget and the shared property
# ----------------------------------------------------------------------------------------------

FUZZ_EXAMPLES = int(os.environ.get("AECLI_FUZZ_EXAMPLES", "0") or 0)

settings.register_profile(
    "aecli-fuzz",
    derandomize=True,  # a fixed seed per test, derived from its name
    deadline=None,  # time is bounded by `ok_or_error` instead, with generous limits
    database=None,
    # No explain phase: on Python < 3.12 it traces every line of every example, several times slower.
    phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ_PROFILE = settings.get_profile("aecli-fuzz")


def budget(default: int, share: float = 1.0) -> settings:
    """`default` examples, or `share` of AECLI_FUZZ_EXAMPLES when that is set."""
    return settings(FUZZ_PROFILE, max_examples=max(default, int(FUZZ_EXAMPLES * share)) if FUZZ_EXAMPLES else default)


MAX_MESSAGE = 1000  # characters: one line a person reads, not a dump of the input
SECONDS = 10.0  # one load of a small input; anything slower is a blow-up in the making


def check_message(exc: BaseException) -> None:
    message = str(exc)
    assert message.strip(), f"{type(exc).__name__} with an empty message"
    assert len(message.splitlines()) == 1, f"{type(exc).__name__} message is not one line: {message[:2000]!r}"
    assert len(message) <= MAX_MESSAGE, f"{type(exc).__name__} message has {len(message)} characters: {message[:400]!r}"


def ok_or_error(expected: type[AecliError], call: Callable[[], T], seconds: float = SECONDS) -> T | None:
    """`call()`'s result, or None when it raised `expected` with a one-line message; any other
    exception propagates (a failure), and so does a call slower than `seconds`."""
    started = time.monotonic()
    try:
        result: T | None = call()
    except expected as exc:
        note(f"{type(exc).__name__}: {str(exc)[:300]}")
        check_message(exc)
        result = None
    event("loaded" if result is not None else "refused")
    elapsed = time.monotonic() - started
    assert elapsed < seconds, f"took {elapsed:.1f} s (limit {seconds} s)"
    return result


# ----------------------------------------------------------------------------------------------
# YAML documents: a small tree rendered by hand, so anchors, aliases, tags, odd scalar
# spellings and repeated keys can all be written (a YAML library would normalise them away)
# ----------------------------------------------------------------------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _literals(annotation: Any) -> list[str]:
    found: list[str] = []
    pending = [annotation]
    while pending:
        current = pending.pop()
        if get_origin(current) is Literal:
            found.extend(str(value).lower() if isinstance(value, bool) else str(value) for value in get_args(current))
        else:
            pending.extend(get_args(current))
    return found


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """Section -> {key -> nested schema or the key's literal choices}, read from the config models."""
    tree: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        nested = _section_model(info.annotation)
        tree[name] = _schema(nested) if nested is not None else _literals(info.annotation)
    return tree


SCHEMA = _schema(AecliConfig)


def _names(tree: dict[str, Any]) -> set[str]:
    names = set(tree)
    for value in tree.values():
        if isinstance(value, dict):
            names |= _names(value)
    return names


ALL_NAMES = sorted(_names(SCHEMA))


def _all_literals(tree: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for value in tree.values():
        found |= _all_literals(value) if isinstance(value, dict) else set(value)
    return found


ALL_LITERALS = sorted(_all_literals(SCHEMA))
SOURCE_SENTINEL = "__FUZZ_SOURCE__"  # replaced by the path of a real small .npy file
MAX_DOCUMENT = 1 << 20

ODD_SCALARS = [
    *("~", "null", "Null", "NULL", "", "true", "false", "True", "FALSE", "yes", "no", "on", "off", "y", "n"),
    *(".inf", "-.inf", "+.inf", ".Inf", ".nan", ".NaN", "inf", "nan", "infinity"),
    *("0x10", "0o17", "017", "0b101", "10:00", "1:20:30", "190:20:30.15", "1_000", "+12", "-0", "+0", "00"),
    *("1e39", "-1e39", "3.4028235e38", "3.4028236e38", "1.7976931348623157e308", "1e308", "1e309", "-1e309"),
    *("1e-400", "4.9e-324", "1e-45", "0.0", "-0.0", "1e3", "1E3", "1.5e+2", "1.0e+3", ".5", "5.", "1e", "e3"),
    *("9223372036854775807", "9223372036854775808", "18446744073709551616", "1" + "0" * 400, "-1"),
    *("2001-12-14", "2001-12-14t21:59:43.10-05:00", "2001-13-45", "=", "<<", "?", "-", "@x", "`x", "%x", "#x"),
    *("0.1", "0.5", "0.999", "1", "2", "3", "8", "16", "0.001", "1e-3", "[]", "{}", "[1, 2]", "[32, 16]"),
]
TAGS = [
    *("!!str", "!!int", "!!float", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs"),
    *("!!seq", "!!map", "!!merge", "!!value", "!!python/object/apply:os.system", "!!python/name:os.system"),
    *("!custom", "!<tag:yaml.org,2002:str>", "!<!>", "!"),
]
IDENTIFIER = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)


@dataclass
class Node:
    kind: Literal["scalar", "seq", "map", "alias"]
    text: str = ""  # a scalar's spelling, or the anchor an alias names
    items: list[Node] = field(default_factory=list)
    pairs: list[tuple[str, Node]] = field(default_factory=list)
    anchor: str | None = None
    tag: str | None = None


@dataclass
class DocState:
    anchors: list[str] = field(default_factory=list)
    duplicate: bool = False  # some mapping repeats a plain key


def _percent(draw: st.DrawFn, chance: int) -> bool:
    return draw(st.integers(0, 99)) >= 100 - chance  # shrinks towards "no"


def _quoted(text: str, style: int) -> str:
    if style == 0:
        return json.dumps(text)  # a JSON string is a YAML double-quoted scalar
    return "'" + text.replace("'", "''") + "'"


@st.composite
def scalar_text(draw: st.DrawFn, choices: tuple[str, ...] = ()) -> str:
    kind = draw(st.integers(0, 12 if choices else 9))
    if kind >= 10:
        return draw(st.sampled_from(choices))
    if kind <= 2:
        return draw(st.sampled_from(ODD_SCALARS))
    if kind == 3:
        return str(draw(st.integers(-3, 300) | st.integers(-(2**70), 2**70)))
    if kind == 4:
        return repr(draw(st.floats()))
    if kind == 5:
        return _quoted(draw(st.text(max_size=20) | st.sampled_from(ODD_SCALARS)), draw(st.integers(0, 1)))
    if kind == 6:
        return draw(IDENTIFIER | st.sampled_from(ALL_LITERALS))
    if kind == 7:
        return draw(st.sampled_from(["digits", "mnist", SOURCE_SENTINEL, "/nonexistent/x.npy", "."]))
    if kind == 8:
        return draw(st.sampled_from(["true", "false", "null", "0", "1"]))
    size = draw(st.sampled_from([200, 5000, 100_000, MAX_DOCUMENT + 1]))
    return draw(st.sampled_from(["x", "9", "é"])) * size


@st.composite
def yaml_node(draw: st.DrawFn, state: DocState, schema: dict[str, Any] | list[str] | None, depth: int) -> Node:
    """A value for a key whose schema is a section (dict), a leaf's choices (list) or unknown (None)."""
    if state.anchors and _percent(draw, 7):
        name = draw(st.sampled_from([*state.anchors, "undefined"]))
        return Node("alias", name)
    anchor = None
    if _percent(draw, 8):
        anchor = f"a{len(state.anchors)}"
        state.anchors.append(anchor)  # visible to this node's own children too: a cycle
    tag = draw(st.sampled_from(TAGS)) if _percent(draw, 12) else None
    if isinstance(schema, dict) and not _percent(draw, 15):
        node = draw(yaml_mapping(state, schema, depth + 1))
    elif isinstance(schema, list) and schema and not _percent(draw, 25):
        node = Node("scalar", draw(st.sampled_from(schema)))
    elif depth < 4 and _percent(draw, 25):
        if draw(st.booleans()):
            node = Node("seq", items=draw(st.lists(yaml_node(state, None, depth + 1), max_size=4)))
        else:
            node = draw(yaml_mapping(state, None, depth + 1))
    else:
        node = Node("scalar", draw(scalar_text(tuple(schema) if isinstance(schema, list) else ())))
    node.anchor, node.tag = anchor, tag
    return node


@st.composite
def yaml_mapping(draw: st.DrawFn, state: DocState, schema: dict[str, Any] | None, depth: int) -> Node:
    known = sorted(schema) if schema else []
    keys = st.sampled_from(known) if known and not _percent(draw, 10) else IDENTIFIER | st.sampled_from(ALL_NAMES)
    pairs: list[tuple[str, Node]] = []
    for _ in range(draw(st.integers(0, 5))):
        if state.anchors and _percent(draw, 3):
            pairs.append(("<<", Node("alias", draw(st.sampled_from(state.anchors)))))
            continue
        key = draw(keys)
        if any(existing == key for existing, _ in pairs):
            state.duplicate = True
        pairs.append((key, draw(yaml_node(state, schema.get(key) if schema else None, depth))))
    return Node("map", pairs=pairs)


def _prefix(node: Node) -> str:
    return "".join(f"{part} " for part in (node.anchor and f"&{node.anchor}", node.tag) if part)


def render_flow(node: Node) -> str:
    if node.kind == "alias":
        return f"*{node.text}"
    if node.kind == "scalar":
        return _prefix(node) + node.text
    if node.kind == "seq":
        return _prefix(node) + "[" + ", ".join(render_flow(item) for item in node.items) + "]"
    return _prefix(node) + "{" + ", ".join(f"{key}: {render_flow(value)}" for key, value in node.pairs) + "}"


def render_block(node: Node, indent: int = 0) -> str:
    """Block mappings down to the second level (as configs are written), flow style below."""
    lines: list[str] = []
    pad = " " * indent
    for key, value in node.pairs:
        if value.kind == "map" and value.pairs and indent < 4:
            prefix = _prefix(value).rstrip()
            lines.append(f"{pad}{key}:{' ' + prefix if prefix else ''}")
            lines.append(render_block(value, indent + 2))
        else:
            lines.append(f"{pad}{key}: {render_flow(value)}")
    return "\n".join(lines)


DOC_STARTS = ["", "---\n", "%YAML 1.2\n---\n", "%YAML 1.1\n---\n", "# a comment\n", "\ufeff", "--- !!map\n"]
DOC_ENDS = ["\n", "", "\n...\n", "\n---\n{}\n", "\n--- \n", "\n# end", "\n\x00", "\n\t"]


@st.composite
def yaml_documents(draw: st.DrawFn) -> tuple[str, bool]:
    """(document text, whether some mapping in it repeats a key)."""
    state = DocState()
    if _percent(draw, 85):
        top = draw(yaml_mapping(state, SCHEMA, 0))
        body = render_block(top) if draw(st.booleans()) else render_flow(top)
    else:
        body = render_flow(draw(yaml_node(state, None, 0)))
    return draw(st.sampled_from(DOC_STARTS)) + body + draw(st.sampled_from(DOC_ENDS)), state.duplicate


YAML_ALPHABET = st.sampled_from([*list("&*!-:?[]{},#|>'\"%@`~<=. \n\t\r\\abnxyz019eE_+"), "\x00", "\ufeff", "\x85"])


@st.composite
def override_strings(draw: st.DrawFn) -> str:
    if _percent(draw, 15):
        return draw(st.text(max_size=40))
    if _percent(draw, 80):
        section = draw(st.sampled_from(sorted(SCHEMA)))
        path = [section]
        tree: Any = SCHEMA[section]
        while isinstance(tree, dict) and tree and draw(st.booleans()):
            path.append(draw(st.sampled_from(sorted(tree))))
            tree = tree[path[-1]]
        key = ".".join(path)
    else:
        key = draw(st.sampled_from(["", ".", "a..b", ".model", "model.", " model . latent_dim ", "x=y"]) | IDENTIFIER)
        tree = None
    separator = draw(st.sampled_from(["=", "=", "=", "", " = ", "=="]))
    state = DocState()
    value = render_flow(draw(yaml_node(state, tree, 2)))
    return key + separator + value


def write_config(folder: Path, text: str) -> Path:
    source = folder / "source.npy"
    if SOURCE_SENTINEL in text:
        np.save(source, np.random.default_rng(0).random((12, 5)))
    path = folder / "config.yaml"
    path.write_bytes(text.replace(SOURCE_SENTINEL, str(source)).encode("utf-8", "surrogatepass"))
    return path


def _leaves(value: Any, where: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{where}.{key}".lstrip("."))]
    if isinstance(value, list):
        return [leaf for index, item in enumerate(value) for leaf in _leaves(item, f"{where}[{index}]")]
    return [(where, value)]


def check_accepted(config: AecliConfig, folder: Path, duplicate: bool = False) -> None:
    """What every accepted config must be: usable by a run, and saved and reloaded unchanged."""
    assert isinstance(config, AecliConfig)
    assert not duplicate, "a document that repeats a key was accepted (one of the values was silently dropped)"
    dumped = dump_config(config)
    for where, value in _leaves(dumped):
        if isinstance(value, float):
            with np.errstate(over="ignore"):
                as_float32 = float(np.float32(value))
            assert math.isfinite(as_float32), f"accepted {where} = {value!r}: not a finite float32"
    # keras.utils.set_random_seed seeds numpy's legacy generator, which takes 0 .. 2**32 - 1 only.
    assert 0 <= config.training.seed < 2**32, f"accepted training.seed = {config.training.seed}: not a 32-bit seed"
    saved = folder / "saved-config.yaml"
    saved.write_text(config_to_yaml(config), encoding="utf-8")
    try:
        reloaded = load_config(saved)
    except AecliError as exc:
        raise AssertionError(f"the saved config.yaml of an accepted config does not load back: {exc}") from None
    assert dump_config(reloaded) == dumped, "the saved config.yaml loads back as a different config"


# ----------------------------------------------------------------------------------------------
# 1. The config layer
# ----------------------------------------------------------------------------------------------


@budget(300)
@given(document=yaml_documents())
def test_yaml_documents_load_or_fail_with_one_line(document: tuple[str, bool]) -> None:
    text, duplicate = document
    note(f"document ({len(text)} characters): {text[:3000]!r}")
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), text)
        config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder), duplicate)


@budget(200)
@given(text=st.text(YAML_ALPHABET, max_size=80) | st.text(max_size=80))
def test_random_text_loads_or_fails_with_one_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder))


@budget(100)
@given(data=st.binary(max_size=200))
def test_random_bytes_load_or_fail_with_one_line(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_bytes(data)
        config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder))


@budget(300)
@given(document=st.none() | yaml_documents(), overrides=st.lists(override_strings(), max_size=4))
def test_set_overrides_apply_or_fail_with_one_line(document: tuple[str, bool] | None, overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = None if document is None else write_config(Path(folder), document[0])
        overrides = [item.replace(SOURCE_SENTINEL, "digits") for item in overrides]
        config = ok_or_error(AecliError, lambda: load_config(path, overrides))
        if config is not None:
            # An override replaces a value (no duplicate can survive it), so only the document's own repeats count.
            check_accepted(config, Path(folder), document is not None and document[1] and not overrides)


@budget(200)
@given(
    tag=st.sampled_from(TAGS),
    value=scalar_text() | st.sampled_from(["[]", "{}", "[a, 1]", "{a: 1}"]),
    where=st.sampled_from(["document", "section", "leaf", "override"]),
)
def test_tagged_values_load_or_fail_with_one_line(tag: str, value: str, where: str) -> None:
    """Every explicit tag on every kind of value: tags reach constructors plain scalars never do."""
    node = f"{tag} {value}"
    with tempfile.TemporaryDirectory() as folder:
        if where == "override":
            config = ok_or_error(AecliError, lambda: load_config(None, [f"loss.name={node}"]))
        else:
            documents = {"document": f"{node}\n", "section": f"model: {node}\n", "leaf": f"loss: {{name: {node}}}\n"}
            path = write_config(Path(folder), documents[where])
            config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder))


STRING_FIELDS = [
    "data: {source: %s}\n",
    "data: {source: x.csv, label_column: %s}\n",
    "data: {source: x.npy, labels_path: %s}\n",
    "training: {distribute: {strategy: mirrored, devices: [%s]}}\n",
]


@budget(150)
@given(
    template=st.sampled_from(STRING_FIELDS),
    text=st.sampled_from(ODD_SCALARS) | st.text(max_size=20),
    style=st.integers(0, 1),
)
def test_string_values_survive_a_save_and_reload(template: str, text: str, style: int) -> None:
    """A quoted string in a string field stays a string in the config.yaml a run saves."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), template % _quoted(text, style))
        config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder))


NUMBER_FIELDS = [
    "optimizer: {learning_rate: %s}\n",
    "optimizer: {epsilon: %s, clipnorm: %s}\n",
    "optimizer: {weight_decay: %s}\n",
    "optimizer: {name: adagrad, initial_accumulator_value: %s}\n",
    "optimizer: {name: sgd, momentum: %s}\n",
    "model: {regularization: {l1: %s, l2: %s}}\n",
    "model: {regularization: {activity_l1: %s}}\n",
    "model: {latent_activation: sigmoid, regularization: {sparsity: {target: %s, weight: %s}}}\n",
    "model: {latent_dim: %s, encoder: [%s], dropout: %s}\n",
    "model: {kind: vae, beta: %s}\n",
    "loss: {name: huber, delta: %s}\n",
    "training: {early_stopping: {min_delta: %s, patience: %s}}\n",
    "training: {lr_schedule: {kind: reduce_on_plateau, min_lr: %s, factor: %s}}\n",
    "training: {lr_schedule: {kind: exponential, decay_rate: %s}}\n",
    "training: {noise: {amount: %s}}\n",
    "training: {seed: %s, batch_size: %s, steps_per_execution: %s}\n",
    "training: {epochs: %s}\n",
    "data: {limit: %s, classes: [%s], validation_split: %s}\n",
]
NUMBERS = (
    st.sampled_from(ODD_SCALARS)
    | st.floats().map(repr)
    | st.integers().map(str)
    | st.integers(-(2**80), 2**80).map(str)
    | st.sampled_from(["1", "0.5", "0.01", "3"])
)


@budget(300)
@given(template=st.sampled_from(NUMBER_FIELDS), data=st.data())
def test_numbers_in_number_fields_are_usable_or_refused(template: str, data: st.DataObject) -> None:
    """Every number a config accepts is one a float32 run can use, and survives a save and reload."""
    values = tuple(data.draw(NUMBERS, label=f"value {index}") for index in range(template.count("%s")))
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), template % values)
        config = ok_or_error(AecliError, lambda: load_config(path))
        if config is not None:
            check_accepted(config, Path(folder))


def test_a_repeated_key_is_refused() -> None:
    """The duplicate-key property above only means something if the generator makes repeats."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), "model: {latent_dim: 3, latent_dim: 4}\n")
        with pytest.raises(ConfigError):
            load_config(path)


# Alias bombs and deep nesting run in a child process with a memory cap and a timeout, so a
# regression fails the test instead of taking the machine down.
CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from aecli.config import load_config
from aecli.errors import AecliError
path = None if sys.argv[1] == "-" else sys.argv[1]
try:
    load_config(path, sys.argv[2:])
except AecliError as exc:
    message = str(exc)
    assert len(message.splitlines()) == 1 and len(message) <= 1000, repr(message[:2000])
    print("error:", message[:300])
else:
    print("ok")
"""
REPO = Path(__file__).resolve().parents[1]


def run_child(path: Path | None, overrides: tuple[str, ...] = ()) -> str:
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, "-" if path is None else str(path), *overrides],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("loading the config did not finish in 60 s") from None
    elapsed = time.monotonic() - started
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-1500:]}"
    assert elapsed < 30, f"took {elapsed:.1f} s"
    return done.stdout


def bomb(depth: int, fanout: int, style: str) -> str:
    """A one-line flow value whose expansion holds fanout**depth leaves (a "billion laughs")."""
    parts = []
    for level in range(depth + 1):
        inner = ["1" if level == 0 else f"*a{level - 1}"] * fanout
        if style == "seq":
            parts.append(f"&a{level} [{', '.join(inner)}]")
        else:
            parts.append(f"&a{level} {{{', '.join(f'k{index}: {item}' for index, item in enumerate(inner))}}}")
    return "[" + ", ".join(parts) + "]"


@budget(4, share=0.01)
@given(
    depth=st.integers(1, 12),
    fanout=st.integers(2, 10),
    style=st.sampled_from(["seq", "map"]),
    place=st.sampled_from(["top", "encoder", "source", "override", "deep"]),
)
@example(depth=9, fanout=10, style="seq", place="encoder")
@example(depth=9, fanout=10, style="map", place="top")
@example(depth=9, fanout=10, style="seq", place="override")
@example(depth=9, fanout=10, style="seq", place="source")
@example(depth=12, fanout=10, style="seq", place="deep")
def test_alias_bombs_and_deep_nesting_are_bounded(depth: int, fanout: int, style: str, place: str) -> None:
    value = bomb(depth, fanout, style)
    levels = 2 ** (depth + 6)  # up to 262,144 levels of nesting
    nested = "[" * levels + "]" * levels if style == "seq" else "{a: " * levels + "1" + "}" * levels
    documents = {
        "top": f"laughs: {value}\n",
        "encoder": f"model: {{encoder: {value}}}\n",
        "source": f"data: {{source: {value}}}\n",
        "deep": f"model: {{encoder: {nested}}}\n",
    }
    with tempfile.TemporaryDirectory() as folder:
        if place == "override":
            out = run_child(None, (f"model.encoder={value}",))
        else:
            path = Path(folder) / "c.yaml"
            path.write_text(documents[place])
            out = run_child(path)
    note(out)


@budget(40, share=0.2)
@given(document=yaml_documents(), overrides=st.lists(override_strings(), max_size=2))
def test_cli_validate_exits_0_or_2_with_one_error_line(document: tuple[str, bool], overrides: list[str]) -> None:
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), document[0])
        flags = [f"--set={item.replace(SOURCE_SENTINEL, 'digits')}" for item in overrides if "\x00" not in item]
        started = time.monotonic()
        result = runner.invoke(app, ["validate", str(path), *flags])
        elapsed = time.monotonic() - started
    note(f"exit {result.exit_code}\nstdout: {result.stdout[-1000:]}\nstderr: {result.stderr[-2000:]}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert elapsed < SECONDS, f"validate took {elapsed:.1f} s"
    event(f"exit {result.exit_code}")
    assert result.exit_code in (0, 2), f"exit code {result.exit_code}"
    if result.exit_code == 0:
        assert "config is valid" in result.stdout
    else:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[:2000]
        assert len(lines[0]) <= MAX_MESSAGE + len("error: ")


# ----------------------------------------------------------------------------------------------
# 2. Data loaders: real small files, then truncated, bit-flipped, spliced or replaced
# ----------------------------------------------------------------------------------------------

IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
TOKENS = [
    *(b"nan", b"inf", b"-inf", b"1e39", b"1e308", b"1e400", b"-1e309", b"", b",", b"\n", b"\r", b'"', b"\x00"),
    *(b"0x10", b"1_0", "\u0663".encode(), "\u00a0".encode(), b"infinity", b" +1 ", b"1e-400", b"-0", b"\xff\xfe"),
    *(b"label", b"a,b,c", b"\n\n\n", b"1,2,3,4,5,6,7\n", b"\x93NUMPY", b"PK\x03\x04", b"\x1f\x8b"),
]


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(IDX_DTYPES[code]).tobytes()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(compressed: bool, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    if compressed:
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@dataclass(frozen=True)
class Seed:
    files: dict[str, bytes] = field(repr=False)  # relative path -> contents
    source: str  # the path given as data.source
    labels: str | None = None  # given as labels_path
    label_column: str | None = None  # a CSV file's label column ("" for none)


def _seeds() -> dict[str, Seed]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 6).astype(np.uint8)
    table = rng.normal(size=(6, 3))
    idx_pair = {"train-images-idx3-ubyte": idx_bytes(images), "train-labels-idx1-ubyte": idx_bytes(labels)}
    folder = {
        "d/train-images-idx3-ubyte.gz": gz(idx_bytes(images)),
        "d/train-labels-idx1-ubyte.gz": gz(idx_bytes(labels)),
        "d/t10k-images-idx3-ubyte.gz": gz(idx_bytes(images[:3])),
        "d/t10k-labels-idx1-ubyte.gz": gz(idx_bytes(labels[:3])),
    }
    csv_text = "a,b,c,label\n" + "".join(f"{x:.3f},{y:.3g},{z:.1e},{'cat' if z > 0 else 'dog'}\n" for x, y, z in table)
    return {
        "idx": Seed(idx_pair, "train-images-idx3-ubyte"),
        "idx.gz": Seed({name + ".gz": gz(data) for name, data in idx_pair.items()}, "train-images-idx3-ubyte.gz"),
        "idx-f8": Seed({"table-idx2-ubyte": idx_bytes(table, 0x0E)}, "table-idx2-ubyte"),
        "idx-f4": Seed({"images.idx": idx_bytes(images.astype(np.float32) / 255, 0x0D)}, "images.idx"),
        "idx-i2": Seed(
            {"images-idx3-ubyte.gz": gz(idx_bytes(images.astype(np.int16) - 128, 0x0B))}, "images-idx3-ubyte.gz"
        ),
        "idx-labels": Seed({"x-ubyte": idx_bytes(images), "y-ubyte": idx_bytes(labels)}, "x-ubyte", labels="y-ubyte"),
        "idx-folder": Seed(folder, "d"),
        "npy-f8": Seed({"t.npy": npy_bytes(table)}, "t.npy"),
        "npy-u8": Seed(
            {"i.npy": npy_bytes(images), "y.npy": npy_bytes(labels.astype(np.int64))}, "i.npy", labels="y.npy"
        ),
        "npz": Seed(
            {"s.npz": npz_bytes(False, x_train=images, y_train=labels, x_test=images[:2], y_test=labels[:2])}, "s.npz"
        ),
        "npz-compressed": Seed({"c.npz": npz_bytes(True, x=table.astype(np.float32), y=labels)}, "c.npz"),
        "csv": Seed({"d.csv": csv_text.encode()}, "d.csv", label_column="label"),
        "csv-plain": Seed(
            {"p.csv": "".join(",".join(map(str, row)) + "\n" for row in table).encode()}, "p.csv", label_column=""
        ),
    }


SEEDS = _seeds()


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "flip", "overwrite", "insert", "delete", "token", "replace"]))
        size = len(data)
        if op == "truncate":
            data = data[: draw(st.integers(0, size))]
        elif op == "flip" and size:
            at, bit = draw(st.integers(0, size - 1)), draw(st.integers(0, 7))
            data = data[:at] + bytes([data[at] ^ (1 << bit)]) + data[at + 1 :]
        elif op == "overwrite" and size:
            at, chunk = draw(st.integers(0, size - 1)), draw(st.binary(min_size=1, max_size=16))
            data = data[:at] + chunk + data[at + len(chunk) :]
        elif op in ("insert", "token"):
            at = draw(st.integers(0, size))
            chunk = draw(st.binary(min_size=1, max_size=16) if op == "insert" else st.sampled_from(TOKENS))
            data = data[:at] + chunk + data[at:]
        elif op == "delete" and size:
            at = draw(st.integers(0, size - 1))
            data = data[:at] + data[at + draw(st.integers(1, 16)) :]
        elif op == "replace":
            data = draw(st.binary(max_size=300))
    return data


def _rezip(data: bytes, member: str, contents: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [(info, contents if info.filename == member else archive.read(info)) for info in archive.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, payload in members:
            archive.writestr(info, payload)
    return buffer.getvalue()


@st.composite
def mutated_file(draw: st.DrawFn, name: str, data: bytes) -> bytes:
    """Byte-level damage, or (for containers) damage inside an intact gzip stream or zip member,
    which reaches the parsers behind the container's own checksums."""
    if name.endswith(".gz") and draw(st.booleans()):
        return gz(draw(mutated_bytes(gzip.decompress(data))))
    if name.endswith((".npz", ".keras")) and draw(st.booleans()):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = draw(st.sampled_from(archive.namelist()))
            contents = archive.read(member)
        return _rezip(data, member, draw(mutated_bytes(contents)))
    return draw(mutated_bytes(data))


def check_raw(raw: RawData) -> None:
    """What read_source promises about what it returns (aecli.data.arrays.check_raw)."""
    assert isinstance(raw, RawData)
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        if x is None:
            assert y is None, f"{split} labels without samples"
            continue
        assert x.dtype.kind in "biuf", f"{split} dtype {x.dtype}"
        assert 2 <= x.ndim <= 4 and len(x) > 0 and math.prod(x.shape[1:]) > 0, f"{split} shape {x.shape}"
        if x.dtype.kind == "f":
            assert np.isfinite(x).all(), f"{split} data with NaN or inf"
        if y is not None:
            assert y.ndim == 1 and len(y) == len(x), f"{split} labels of shape {y.shape} for {len(x)} samples"
            assert y.dtype.kind in "biuf", f"{split} labels of dtype {y.dtype}"


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("name", list(SEEDS))
def test_every_seed_file_loads(name: str) -> None:
    """The fuzzed files start from valid ones, so damage is all that differs."""
    seed = SEEDS[name]
    with tempfile.TemporaryDirectory() as folder:
        write_files(Path(folder), seed.files)
        labels = None if seed.labels is None else Path(folder) / seed.labels
        raw = read_source(str(Path(folder) / seed.source), labels_path=labels, label_column=seed.label_column or None)
        check_raw(raw)


@st.composite
def damaged_sources(draw: st.DrawFn) -> tuple[Seed, dict[str, bytes], dict[str, Any]]:
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    target = draw(st.sampled_from(sorted(seed.files)))
    files = dict(seed.files)
    files[target] = draw(mutated_file(target, files[target]))
    options: dict[str, Any] = {}
    if seed.label_column is not None:
        options["label_column"] = draw(st.sampled_from([None, "label", "a", 0, -1, 3, 99, -99, "nope"]))
    if seed.source.endswith(".npy"):
        options["mmap"] = draw(st.booleans())
    return seed, files, options


@budget(400)
@given(damaged=damaged_sources())
def test_damaged_data_files_load_or_fail_with_one_line(damaged: tuple[Seed, dict[str, bytes], dict[str, Any]]) -> None:
    seed, files, options = damaged
    with tempfile.TemporaryDirectory() as folder:
        write_files(Path(folder), files)
        labels = None if seed.labels is None else Path(folder) / seed.labels
        raw = ok_or_error(
            DataError, lambda: read_source(str(Path(folder) / seed.source), labels_path=labels, **options)
        )
        if raw is not None:
            check_raw(raw)


def in_child(check: Callable[[], None], memory: int = 4 << 30) -> None:
    """Run `check` in a forked child allowed `memory` more bytes of address space, and re-raise what
    it raised: a header that makes numpy allocate terabytes, or kill the interpreter with a signal,
    fails this test instead of the machine or the whole pytest run."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the outcome through the pipe, then leave without cleanup
        os.close(read_end)
        outcome: tuple[BaseException, str] | None = None
        try:
            in_use = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (in_use + memory, in_use + memory))
            check()
        except BaseException as exc:
            outcome = (exc, "".join(traceback.format_exception(exc))[-4000:])
        try:
            payload = pickle.dumps(outcome)
        except Exception:  # an exception that does not pickle travels as text
            failure, text = outcome or (RuntimeError("unknown"), "")
            payload = pickle.dumps((RuntimeError(f"{type(failure).__name__}: {failure}"), text))
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"reading it killed the process with {signal.Signals(os.WTERMSIG(status)).name}")
    try:
        outcome = pickle.loads(payload)
    except Exception as exc:
        raise AssertionError(f"the child's outcome could not be read back: {exc}") from None
    if outcome is not None:
        note(f"in the child process:\n{outcome[1]}")
        raise outcome[0]


NPY_DESCRS = ["<f8", "<f4", "<f2", ">f8", "|u1", "|i1", "<i8", ">i4", "|b1", "<c8", "|O", "<U3", "|S2", "|V8", "<M8[s]"]
NPY_DESCRS += ["<m8[D]", "V0", "<f16", "[('a', '<f4')]", "bogus", "0", "<f8)"]


@budget(150)
@given(
    descr=st.sampled_from(NPY_DESCRS),
    fortran=st.booleans(),
    shape=st.lists(st.integers(0, 8) | st.sampled_from([2**31, 10**9, 2**40, 2**62, -1]), max_size=4),
    payload=st.binary(max_size=128),
    version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x00"]),
    mmap=st.booleans(),
)
def test_npy_headers_load_or_fail_with_one_line(
    descr: str, fortran: bool, shape: list[int], payload: bytes, version: bytes, mmap: bool
) -> None:
    """A well-formed .npy header that promises anything: dtypes, orders, absurd shapes."""
    dtype_text = descr if descr.startswith("[") else repr(descr)
    header = f"{{'descr': {dtype_text}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}, }}".encode()
    length_format = "<H" if version == b"\x01\x00" else "<I"
    prefix = 10 if version == b"\x01\x00" else 12
    header += b" " * (-(prefix + len(header) + 1) % 64) + b"\n"
    data = b"\x93NUMPY" + version + struct.pack(length_format, len(header)) + header + payload

    def check() -> None:
        raw = ok_or_error(DataError, lambda: read_source(str(path), mmap=mmap))
        if raw is not None:
            check_raw(raw)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "h.npy"
        path.write_bytes(data)
        in_child(check)


@budget(150)
@given(
    array=hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.uint16]),
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=3),
    )
)
def test_data_that_loads_scales_to_finite_values(array: np.ndarray) -> None:
    """Every split a source loads into is finite float32 after scaling (it is what trains)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.npy"
        np.save(path, array)
        dataset = ok_or_error(DataError, lambda: load_dataset(DataConfig(source=str(path)), seed=0))
    if dataset is None:
        return
    for split, x in (("train", dataset.x_train), ("validation", dataset.x_val), ("test", dataset.x_test)):
        if x is not None:
            assert x.dtype == np.float32 and np.isfinite(x).all(), f"{split} split scaled to NaN or inf"


@budget(100)
@given(
    base=st.sampled_from([0.0, 1e3, 1e6, 1.6e7, 4.1e7, 1e9, 1.7e9, 1e12, -1e9]),
    dtype=st.sampled_from([np.float64, np.int64]),
    offsets=st.lists(st.lists(st.integers(0, 3), min_size=2, max_size=2), min_size=3, max_size=8),
    scaling=st.sampled_from(["auto", "minmax", "global"]),
)
def test_large_values_with_a_small_range_scale_into_0_1(
    base: float, dtype: type, offsets: list[list[int]], scaling: str
) -> None:
    """The training split is scaled to [0, 1] whatever the data's magnitude (timestamps, IDs, counts)."""
    array: np.ndarray = (base + np.array(offsets, np.float64)).astype(dtype)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.npy"
        np.save(path, array)
        config = DataConfig(source=str(path), scaling=scaling)
        dataset = ok_or_error(DataError, lambda: load_dataset(config, seed=0))
    if dataset is not None:
        low, high = float(dataset.x_train.min()), float(dataset.x_train.max())
        assert low >= -1e-3 and high <= 1 + 1e-3, f"training split scaled to [{low}, {high}], not [0, 1]"


# ----------------------------------------------------------------------------------------------
# Saved models and image files
# ----------------------------------------------------------------------------------------------


@functools.cache
def keras_file() -> bytes:
    """A tiny saved model, built once per module (importing Keras takes seconds)."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        model.save(path)
        return path.read_bytes()


def test_the_keras_seed_loads() -> None:
    from aecli.trained_run import load_model

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        path.write_bytes(keras_file())
        assert load_model(path).output_shape == (None, 2)


@budget(60, share=0.1)
@given(data=st.data(), compile=st.booleans())
def test_damaged_keras_files_load_or_fail_with_one_line(data: st.DataObject, compile: bool) -> None:
    from aecli.trained_run import load_model

    damaged = data.draw(mutated_file("m.keras", keras_file()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        path.write_bytes(damaged)
        ok_or_error(RunError, lambda: load_model(path, compile=compile), seconds=30)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXTRA_CHUNKS = [b"tEXt", b"zTXt", b"iTXt", b"iCCP", b"PLTE", b"tRNS", b"gAMA", b"pHYs", b"sBIT", b"bKGD"]
EXTRA_CHUNKS += [b"acTL", b"fcTL", b"fdAT", b"eXIf", b"cHRM", b"sRGB", b"IHDR", b"IDAT", b"IEND", b"zzZz"]


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        chunks.append((data[at + 4 : at + 8], data[at + 8 : at + 8 + length]))
        at += 12 + length
    return chunks


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return PNG_SIGNATURE + body


@functools.cache
def png_seeds() -> dict[str, bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    seeds: dict[str, bytes] = {}
    for mode, size in [("L", (8, 8)), ("RGB", (5, 3)), ("RGBA", (9, 17)), ("P", (8, 8)), ("1", (8, 8))]:
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        seeds[mode] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16)).save(buffer, "PNG")
    seeds["I;16"] = buffer.getvalue()
    return seeds


SIDES = st.integers(0, 64) | st.sampled_from([255, 4096, 2**14, 2**16, 2**24, 2**31 - 1, 2**31, 2**32 - 1])


@st.composite
def damaged_pngs(draw: st.DrawFn) -> bytes:
    data = png_seeds()[draw(st.sampled_from(sorted(png_seeds())))]
    chunks = png_chunks(data)
    how = draw(st.sampled_from(["bytes", "chunk", "ihdr", "idat", "structure"]))
    if how == "bytes":
        return draw(mutated_bytes(data))
    if how == "chunk":  # damage inside a chunk whose checksum still matches
        at = draw(st.integers(0, len(chunks) - 1))
        chunks[at] = (chunks[at][0], draw(mutated_bytes(chunks[at][1])))
    elif how == "ihdr":
        width, height = draw(SIDES), draw(SIDES)
        depth, color = draw(st.sampled_from([1, 2, 4, 8, 16, 0, 3, 255])), draw(st.sampled_from([0, 2, 3, 4, 6, 1, 7]))
        rest = bytes(draw(st.lists(st.sampled_from([0, 0, 1, 2]), min_size=3, max_size=3)))
        chunks[0] = (b"IHDR", struct.pack(">IIBB", width, height, depth, color) + rest)
    elif how == "idat":  # damage inside a valid zlib stream
        pixels = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
        others = [(k, d) for k, d in chunks if k not in (b"IDAT", b"IEND")]
        chunks = [*others, (b"IDAT", zlib.compress(draw(mutated_bytes(pixels)))), (b"IEND", b"")]
    else:
        for _ in range(draw(st.integers(1, 3))):
            action = draw(st.sampled_from(["drop", "duplicate", "insert", "swap"]))
            at = draw(st.integers(0, len(chunks) - 1)) if chunks else 0
            if action == "drop" and chunks:
                del chunks[at]
            elif action == "duplicate" and chunks:
                chunks.insert(at, chunks[at])
            elif action == "swap" and len(chunks) > 1:
                other = draw(st.integers(0, len(chunks) - 1))
                chunks[at], chunks[other] = chunks[other], chunks[at]
            else:
                chunks.insert(at, (draw(st.sampled_from(EXTRA_CHUNKS)), draw(st.binary(max_size=40))))
    return png_bytes(chunks)


def pixels(result: Any) -> np.ndarray:
    """_read_image's array (newer versions return it with a note about resizing)."""
    return result[0] if isinstance(result, tuple) else result


def test_the_png_seeds_read() -> None:
    from aecli.commands.reconstruct import _read_image

    with tempfile.TemporaryDirectory() as folder:
        for mode, data in png_seeds().items():
            path = Path(folder) / f"{mode.replace(';', '')}.png"
            path.write_bytes(data)
            image = pixels(_read_image(path, (8, 8, 1)))
            assert image.shape == (8, 8, 1) and image.min() >= 0 and image.max() <= 1


@budget(200)
@given(
    seed=st.sampled_from(["L", "RGB", "P", "I;16"]),
    kind=st.sampled_from(EXTRA_CHUNKS),
    payload=st.binary(max_size=40),
    after_image_data=st.booleans(),
)
def test_images_with_odd_chunks_read_or_fail_with_one_line(
    seed: str, kind: bytes, payload: bytes, after_image_data: bool
) -> None:
    """A well-formed chunk with random contents, before the image data (read by open) or after it (read by load)."""
    from aecli.commands.reconstruct import _read_image

    chunks = png_chunks(png_seeds()[seed])
    chunks.insert(len(chunks) - 1 if after_image_data else 1, (kind, payload))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.png"
        path.write_bytes(png_bytes(chunks))
        result = ok_or_error(AecliError, lambda: _read_image(path, (8, 8, 1)))
    if result is not None:
        image = pixels(result)
        assert image.shape == (8, 8, 1) and np.isfinite(image).all()


@budget(300)
@given(data=damaged_pngs(), channels=st.sampled_from([1, 3]))
def test_damaged_images_read_or_fail_with_one_line(data: bytes, channels: int) -> None:
    from aecli.commands.reconstruct import _read_image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "image.png"
        path.write_bytes(data)
        result = ok_or_error(AecliError, lambda: _read_image(path, (8, 8, channels)))
    if result is not None:
        image = pixels(result)
        assert image.shape == (8, 8, channels) and np.isfinite(image).all()
