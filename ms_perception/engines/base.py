"""The engine interface."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ms_perception.core.card import ModelCard


class EngineError(RuntimeError):
    """The engine cannot be created or does not match its model card; the message names the fix."""


class Engine(ABC):
    name: str = "engine"
    card: ModelCard
    warnings: list[str]   # once-only notes from loading (e.g. an accepted edited graph); callers log them

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; ``feeds`` maps input names to arrays shaped as in the card."""

    def close(self) -> None:
        """Release device resources."""

    def check_against_card(self, inputs: dict[str, tuple[list, str]], outputs: dict[str, tuple[list, str]] | list[str],
                           source: str) -> None:
        """Raise EngineError naming every difference between the engine's I/O and the card's: names, shapes
        and dtypes of inputs and outputs, the class count against the score/probability dimension, the task
        against the outputs, and the anchor layout against the number of anchors the graph outputs."""
        if not isinstance(outputs, dict):
            outputs = {name: ([], "") for name in outputs}
        problems = []
        for kind, specs, actual, card_has in (("input", self.card.inputs, inputs, self.card.input),
                                              ("output", self.card.outputs, outputs, self.card.output)):
            for spec in specs:
                if spec.name not in actual:
                    problems.append(f"{kind} {spec.name!r} is in the card but not in the model")
                    continue
                shape, dtype = actual[spec.name]
                # symbolic dims (a dynamic batch) are not compared
                if shape and all(isinstance(s, int) for s in shape) and list(shape) != list(spec.shape):
                    problems.append(f"{kind} {spec.name!r}: model shape {list(shape)}, card {spec.shape}")
                if dtype and dtype != spec.dtype:
                    problems.append(f"{kind} {spec.name!r}: model dtype {dtype}, card {spec.dtype}")
            if kind == "input":
                problems += [f"model input {n!r} is not in the card" for n in actual if card_has(n) is None]
        problems += layout_problems(self.card, {n: (s if s else self._card_shape(n)) for n, (s, _) in outputs.items()})
        if problems:
            raise EngineError(f"{source}: the model card does not match the model: " + "; ".join(problems)
                              + ". Re-export the model (`ms-perception train export`) so the card is regenerated.")

    def _card_shape(self, name: str) -> list:
        spec = self.card.output(name)
        return list(spec.shape) if spec else []


def _dim(shape, i):
    try:
        v = shape[i]
    except IndexError:
        return None
    return v if isinstance(v, int) and v > 0 else None


def layout_problems(card: ModelCard, shapes: dict[str, list]) -> list[str]:
    """What in the card's task, classes and anchors disagrees with the graph's output shapes."""
    problems, k = [], len(card.class_names)
    if card.task == "detection":
        need = ["scores", "boxes" if card.box_decoding == "in_graph" else "deltas"]
        missing = [n for n in need if n not in shapes]
        if "probs" in shapes and "scores" not in shapes:
            return ["the card says task 'detection' but the graph outputs 'probs' (a segmentation model); fix the "
                    "card's task"]
        if missing:
            return [f"a detection model with box_decoding {card.box_decoding!r} needs outputs {need}; the graph has "
                    f"{sorted(shapes)}"]
        for name in [n for n in shapes if n == "scores" or n.startswith("scores_")]:
            kk = _dim(shapes[name], -1)
            if kk is not None and kk != k:
                problems.append(f"output {name!r} scores {kk} classes but the card lists {k} {card.class_names}")
        a = _dim(shapes["scores"], 1)
        if card.box_decoding == "anchors":
            n = sum(lv.num_anchors * h * w for lv, (h, w) in zip(card.anchor_levels, card.level_sizes))
            if len(card.level_sizes) != len(card.anchor_levels):
                problems.append(f"{len(card.anchor_levels)} anchor_levels but {len(card.level_sizes)} level_sizes")
            elif a is not None and n != a:
                problems.append(f"anchor_levels x level_sizes make {n} anchors but the graph outputs {a}")
        elif card.level_sizes and card.anchor_levels and a is not None:
            n = sum(lv.num_anchors * h * w for lv, (h, w) in zip(card.anchor_levels, card.level_sizes))
            if n != a:
                problems.append(f"level_sizes {card.level_sizes} make {n} anchors but the graph outputs {a}")
    else:
        if "probs" not in shapes:
            return [f"the card says task 'segmentation' but the graph has no 'probs' output (outputs "
                    f"{sorted(shapes)}); fix the card's task"]
        for name in [n for n in shapes if n == "probs" or n.startswith("probs_")]:
            kk = _dim(shapes[name], 1)
            if kk is not None and kk != k:
                problems.append(f"output {name!r} has {kk} classes but the card lists {k} {card.class_names}")
    return problems
