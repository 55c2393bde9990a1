"""Built-in recipes, by name. Each trains from scratch (no weights can be downloaded; the
image recipes may start from a version in the platform's own registry, ``init_from``),
driven by the dataset's label schema, and leaves a servable artifact (TorchScript plus
its preprocessing and label names) that needs no user code to load.

A recipe is a ``Recipe``: its name, the tasks it trains for, its parameters with
defaults and what they mean, which records it can learn from, and ``train(ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loophub.errors import InvalidInput


@dataclass(frozen=True)
class Recipe:
    name: str
    tasks: tuple[str, ...]
    description: str
    params: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (default, help)
    # name -> (least, most): numeric parameters checked at submission, not in the job
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    usable: Callable[[dict], bool] = lambda record: True  # records it can learn from
    train: Callable[[Any], dict] | None = None
    internal: bool = False  # run by the platform for another room (evaluate), not listed

    def defaults(self) -> dict[str, Any]:
        return {name: default for name, (default, _) in self.params.items()}

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise InvalidInput(f"training.params: {', '.join(unknown)} is not a parameter of "
                               f"the {self.name} recipe; it takes {', '.join(self.params)}",
                               detail={"field": f"params.{unknown[0]}"})
        out = self.defaults()
        for name, value in params.items():
            default = self.params[name][0]
            if isinstance(default, bool) != isinstance(value, bool) or (
                    isinstance(default, int | float) and not isinstance(value, int | float)) or (
                    isinstance(default, str) and not isinstance(value, str)):
                raise InvalidInput(f"training.params.{name}: expected a value like "
                                   f"{default!r}, got {value!r}",
                                   detail={"field": f"params.{name}"})
            least, most = self.ranges.get(name, (None, None))
            if least is not None and not least <= value <= most:
                raise InvalidInput(f"training.params.{name}: {value!r} is outside {least} to "
                                   f"{most}; give a number in that range",
                                   detail={"field": f"params.{name}"})
            out[name] = value
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "tasks": list(self.tasks), "description": self.description,
                "params": {k: {"default": d, "help": h,
                               **({"range": list(self.ranges[k])} if k in self.ranges else {})}
                           for k, (d, h) in self.params.items()}}


def recipes() -> dict[str, Recipe]:
    """Every built-in recipe by name (imported on use: they import torch)."""
    from loophub.models import recipe as model_recipe
    from loophub.training.recipes import detection, image, text

    found = [*image.RECIPES, *text.RECIPES, *detection.RECIPES, model_recipe.RECIPE]
    return {r.name: r for r in found}


def recipe(name: str, task: str | None = None, *, internal: bool = False) -> Recipe:
    """The recipe NAME, checked against the dataset's TASK; errors say what fits. An
    internal recipe is found only when INTERNAL (the platform submits it, not users)."""
    known = {n: r for n, r in recipes().items() if internal or not r.internal}
    if name not in known:
        raise InvalidInput(f"training.recipe: no recipe {name!r}; one of "
                           f"{', '.join(sorted(known))}", detail={"field": "recipe"})
    found = known[name]
    if task is not None and task not in found.tasks:
        fitting = sorted(r.name for r in known.values() if task in r.tasks)
        raise InvalidInput(
            f"training.recipe: {name} trains {', '.join(found.tasks)}, but the dataset's task "
            f"is {task}" + (f"; for {task} use {', '.join(fitting)}" if fitting else ""),
            detail={"field": "recipe"})
    return found
