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

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; ``feeds`` maps input names to arrays shaped as in the card."""

    def close(self) -> None:
        """Release device resources."""

    def check_against_card(self, inputs: dict[str, tuple[list, str]], outputs: list[str], source: str) -> None:
        """Raise EngineError naming every difference between the engine's I/O and the card's."""
        problems = []
        for spec in self.card.inputs:
            if spec.name not in inputs:
                problems.append(f"input {spec.name!r} is in the card but not in the model")
                continue
            shape, dtype = inputs[spec.name]
            if all(isinstance(s, int) for s in shape) and list(shape) != spec.shape:  # symbolic dims are not compared
                problems.append(f"input {spec.name!r}: model shape {list(shape)}, card {spec.shape}")
            if dtype != spec.dtype:
                problems.append(f"input {spec.name!r}: model dtype {dtype}, card {spec.dtype}")
        for name in inputs:
            if self.card.input(name) is None:
                problems.append(f"model input {name!r} is not in the card")
        for spec in self.card.outputs:
            if spec.name not in outputs:
                problems.append(f"output {spec.name!r} is in the card but not in the model")
        if problems:
            raise EngineError(f"{source}: the model card does not match the model: " + "; ".join(problems)
                              + ". Re-export the model (`ms-perception train export`) so the card is regenerated.")
