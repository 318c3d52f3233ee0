"""What a pooled-input model predicts from, captured by a spy (shared by the formula tests)."""
from __future__ import annotations

import torch


def fields_of(model, batch) -> torch.Tensor:
    """The ``[B, n, e]`` field embeddings a pooled-input model passes to its ``predict``."""
    seen = {}
    original = model.predict

    def spy(fields, cat, user_rows):
        seen["fields"] = fields
        return original(fields, cat, user_rows)

    model.predict = spy
    with torch.no_grad():
        model(batch)
    del model.predict
    return seen["fields"]
