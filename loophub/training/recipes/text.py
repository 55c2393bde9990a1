"""Text recipes (classification with a tokenizer learnt from the data, NER token
classification): see RECIPES."""

from __future__ import annotations

from loophub.training.recipes import Recipe

RECIPES: list[Recipe] = []
