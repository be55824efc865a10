"""Whether the training step is XLA-compiled (`training.jit_compile: auto`), from measured rules.

TensorFlow-free: the rules take the model's layer class names and what the machine has, so
they are cheap to test and to print. The measurements behind them are in BENCHMARKS.md
("Which ops XLA slows down on a CPU", from `python benchmarks/bench_kinds.py`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

# On a CPU, XLA runs these (forward and gradients) slower than TensorFlow's own kernels:
# up to 2x per step, and 6-14x inside aecli's multi-step blocks, where XLA compiles them into one
# loop; dense layers, on the other hand, gain from XLA there (BENCHMARKS.md).
SLOWER_UNDER_XLA_ON_CPU = frozenset(
    {
        "Conv1D",
        "Conv1DTranspose",
        "Conv2D",
        "Conv2DTranspose",
        "Conv3D",
        "Conv3DTranspose",
        "DepthwiseConv2D",
        "SeparableConv2D",
        "MaxPooling1D",
        "MaxPooling2D",
        "AveragePooling1D",
        "AveragePooling2D",
        # Recurrent layers: an LSTM(64) autoencoder on 2,939 windows of 288 steps took 38 s per epoch
        # with XLA and 6.5 s without (configs/nab_conv1d.yaml with model.kind lstm).
        "LSTM",
        "GRU",
    }
)


@dataclass(frozen=True)
class JitDecision:
    """The resolved `training.jit_compile`, with the rule that chose it (recorded in run.json)."""

    enabled: bool
    setting: bool | Literal["auto"]
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "setting": self.setting, "reason": self.reason}


def resolve_jit_compile(
    setting: bool | Literal["auto"], layer_kinds: Iterable[str], backend: str, accelerator: bool, distributed: bool
) -> JitDecision:
    """XLA or not for one model on this machine; an explicit true/false in the config wins, except
    under tf.distribute, whose cross-replica reductions XLA does not compile on a CPU."""
    if distributed:
        return JitDecision(False, setting, "off under tf.distribute (cross-replica reductions are not XLA-compiled)")
    if setting is not True and setting is not False:
        return _auto(set(layer_kinds), backend, accelerator)
    return JitDecision(setting, setting, "set in the config")


def _auto(kinds: set[str], backend: str, accelerator: bool) -> JitDecision:
    if backend == "jax":
        return JitDecision(True, "auto", "auto: JAX runs every step through XLA (off would mean op-by-op)")
    if backend == "torch":
        return JitDecision(False, "auto", "auto: torch.compile is not used (Keras's default for PyTorch)")
    if accelerator:
        return JitDecision(True, "auto", "auto: XLA on a GPU")
    slow = sorted(kinds & SLOWER_UNDER_XLA_ON_CPU)
    if slow:
        return JitDecision(False, "auto", f"auto: {', '.join(slow)} train faster without XLA on a CPU")
    return JitDecision(True, "auto", "auto: dense layers train faster with XLA on a CPU")
