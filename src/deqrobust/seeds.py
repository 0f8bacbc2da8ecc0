"""Every random stream of a run, derived from the config's seed by one function.

A stream is named by a tuple of integers (seed, stream, index...): the training order of
an epoch, the attack of a training iteration, the attack of an evaluation batch. Each
tuple maps to its own seed through NumPy's SeedSequence, so streams never overlap, no
global RNG is involved, and a resumed job draws exactly what the uninterrupted one would.
"""

from __future__ import annotations

import numpy as np

# Stream keys (the second integer of a tuple; the training order uses (seed, epoch)).
TRAIN_ATTACK = 1  # adversarial examples of a training iteration
DEV_EVAL = 2  # the dev-split attack of the training's model selection
TEST_ATTACK = 3  # the attack of an evaluation cell's batch
DEV_SELECT = 4  # the attack of select-exit's dev batch
ANALYSIS_ATTACK = 5  # the adversarial inputs of the fixed-point analysis


def derive(*keys: int) -> int:
    """The 63-bit seed of the stream ``keys`` (e.g. ``derive(seed, TEST_ATTACK, batch)``)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def generator(*keys: int, device="cpu"):
    """A torch.Generator seeded with ``derive(*keys)``, independent of torch's global RNG."""
    import torch

    return torch.Generator(device=device).manual_seed(derive(*keys))
