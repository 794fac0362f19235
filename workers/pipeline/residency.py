"""Which LoRAs a warm pipeline holds, and how a job's stack is made active.

LoRAs stay resident keyed by sha256, so switching never reloads the base model. Two ways to hold
them: peft adapters on the pipeline (`set_adapters` at exactly the requested multipliers, bit for
bit what diffusers computes), or, with the stack adapter (see `lora_stack.py`), factors taken out
of the model and copied into one fixed adapter, so compiled blocks never recompile. Full deltas of
ComfyUI/kohya-style files (`diff`, `diff_b`: norms, biases, embeddings) are held beside them and
written into the parameters themselves (see `lora_deltas.py`). The least recently used LoRA is
unloaded once the resident set passes its memory budget.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .lora_deltas import FullDeltas, LoraFile
from .lora_stack import Layers, LoraStack, peft_layers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSpec:
    path: str
    sha256: str
    multiplier: float
    software_version: str | None = None
    keep_multiplier: bool = False  # the draft preset's step-distill LoRA: a prompt's `--m` leaves it as it is


def adapter_name(sha256: str) -> str:
    return f"lora_{sha256[:16]}"


class LoraResidency:
    def __init__(self, pipe, *, replica=None, stack_adapter: bool, budget_bytes: int):
        self.pipe, self.replica = pipe, replica  # the replica: the transformer copy on a CFG device
        self.budget_bytes = budget_bytes
        self.transformers = [pipe.transformer] + ([replica] if replica is not None else [])
        self.stacks = [LoraStack(model) for model in self.transformers] if stack_adapter else []
        self.deltas = [FullDeltas(model) for model in self.transformers]
        self._sizes: OrderedDict[str, int] = OrderedDict()  # adapter name -> bytes, least recent first

    @property
    def lora_math(self) -> str:
        return "stack" if self.stacks else "peft"

    @property
    def resident(self) -> list[str]:
        return list(self._sizes)

    def activate(self, loras: list[LoraSpec]) -> float:
        """Make exactly `loras` active at their multipliers; returns the seconds it took."""
        start = time.perf_counter()
        names = [self._ensure_loaded(lora) for lora in loras]
        weights = [lora.multiplier for lora in loras]
        for model in self._peft_holders():
            if names:
                model.enable_lora()
                model.set_adapters(names, weights)
            elif self._sizes:
                model.disable_lora()
        for stack in self.stacks:
            stack.activate(list(zip(names, weights)))
        for deltas in self.deltas:
            deltas.activate(list(zip(names, weights)))
        self._evict(keep=set(names))
        return time.perf_counter() - start

    def layers(self, stack: list[tuple[str, float]]) -> Layers:
        """Per-layer factors of resident adapters at multipliers (fast mode merges them)."""
        return self.stacks[0].layers(stack) if self.stacks else peft_layers(self.pipe.transformer, stack)

    def delta_names(self, stack: list[tuple[str, float]]) -> set[str]:
        """The pipeline transformer's parameters that full deltas of the stack change (fast mode copies them)."""
        return self.deltas[0].names(stack)

    def _ensure_loaded(self, lora: LoraSpec) -> str:
        name = adapter_name(lora.sha256)
        if name not in self._sizes:
            path = Path(lora.path)
            file = LoraFile.read(path)
            args, kwargs = file.source()
            self.pipe.load_lora_weights(*args, **kwargs, adapter_name=name)
            if self.replica is not None:
                try:
                    args, kwargs = file.source()
                    state, metadata = self.pipe.lora_state_dict(*args, **kwargs, return_lora_metadata=True)
                    self.pipe.load_lora_into_transformer(
                        state, transformer=self.replica, adapter_name=name, metadata=metadata
                    )
                except Exception:
                    self.pipe.delete_adapters(name)  # keep both copies in step
                    raise
            self._take_out(name, file.deltas)
            # its factors (the file less its full deltas), and on each transformer its deltas and base copies
            factors = path.stat().st_size - sum(delta.nbytes for delta in file.deltas.values())
            self._sizes[name] = factors + sum(holder.held_bytes(name) for holder in self.deltas)
        self._sizes.move_to_end(name)
        return name

    def _take_out(self, name: str, deltas: dict) -> None:
        """With the stack adapter, a new LoRA's factors leave the model (whose structure the
        compiled blocks depend on) as soon as diffusers has loaded them; its full deltas are kept
        for each transformer."""
        try:
            for stack in self.stacks:
                stack.take(name)
            for holder in self.deltas:
                holder.add(name, deltas)
        except Exception:
            for holder in self.deltas:
                holder.drop(name)
            for stack in self.stacks:
                stack.drop(name)
            for model in self.transformers:
                if name in getattr(model, "peft_config", {}):
                    model.delete_adapters(name)
            raise

    def _peft_holders(self):
        """What holds the LoRAs as peft adapters: nothing with the stack adapter (the stacks do);
        else the pipeline (its adapter API covers its transformer) and the bare replica."""
        if self.stacks:
            return []
        return [self.pipe] + ([self.replica] if self.replica is not None else [])

    def _evict(self, keep: set[str]) -> None:
        while sum(self._sizes.values()) > self.budget_bytes:
            victim = next((n for n in self._sizes if n not in keep), None)
            if victim is None:
                return
            for stack in self.stacks:
                stack.drop(victim)
            for holder in self.deltas:
                holder.drop(victim)
            for model in self._peft_holders():
                model.delete_adapters(victim)
            del self._sizes[victim]
            log.info("unloaded adapter %s (LoRA memory budget)", victim)
