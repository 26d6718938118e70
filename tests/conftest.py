"""Shared fixtures: a small synthetic chest CT with known labels (inference.synthetic)."""

from __future__ import annotations

import pytest

from inference.synthetic import LesionSpec, Phantom, generate_phantom


@pytest.fixture(scope="session")
def small_phantom() -> Phantom:
    """24 slices of 96 x 96 (10 x 3.6 x 3.6 mm), a GGO and a consolidation; ~0.5 s."""
    return generate_phantom(
        shape=(24, 96, 96),
        spacing=(10.0, 3.6, 3.6),
        lesions=[
            LesionSpec("ggo", centre=(0.5, 0.45, 0.2), volume_ml=80.0),
            LesionSpec("consolidation", centre=(0.45, 0.5, 0.8), volume_ml=50.0),
        ],
        seed=7,
    )
