"""The synthetic generator's parts: the furniture and texture registries and the renderer's output table."""
import json

import numpy as np
import pytest

from tensoradapt.data.synthetic import NUM_CLASSES, generate_synthetic, sample_scene, synthesize
from tensoradapt.data.synthetic.classes import BED
from tensoradapt.data.synthetic.furniture import FURNITURE_KINDS, add_furniture, furniture
from tensoradapt.data.synthetic.materials import Texture
from tensoradapt.data.synthetic.scene import SceneBuilder, Shape, yaw_axes
from tensoradapt.data.synthetic.shading import OUTPUTS
from tensoradapt.data.synthetic.streams import scene_rng
from tensoradapt.data.synthetic.textures import PATTERNS, blend_and_emission

_WALLS = [0, 1, 4, 5]
_ROOM = np.array([5.0, 2.7, 6.0])
_TOL = 0.01  # a book stack on a piece of furniture against a wall may overhang it by a few millimetres


def _extent(p):
    """(lo (3,), hi (3,)) world bounds of a primitive."""
    if p.kind == Shape.BOX:
        reach = np.abs(yaw_axes(p.yaw)).T @ p.size
    elif p.kind == Shape.CYLINDER:
        reach = np.array([p.size[0], p.size[1], p.size[0]])
    else:
        reach = np.full(3, p.size[0])
    return p.center - reach, p.center + reach


@pytest.mark.parametrize("kind", list(FURNITURE_KINDS))
def test_every_furniture_kind_builds_inside_an_empty_room(kind):
    for seed in range(4):
        b = SceneBuilder(np.random.default_rng(seed))
        add_furniture(b, _ROOM, kind, _WALLS)
        assert b.primitives, f"{kind} found no spot in an empty room (seed {seed})"
        assert b.footprints, f"{kind} did not reserve its floor space"
        assert all(-1 <= ob.label < NUM_CLASSES for ob in b.objects)
        assert {p.obj for p in b.primitives} == set(range(len(b.objects)))  # no object without a primitive
        for p in b.primitives:
            lo, hi = _extent(p)
            assert (lo >= -_TOL).all() and (hi <= _ROOM + _TOL).all(), f"{kind} pokes out of the room: {lo}, {hi}"


def test_unknown_or_duplicate_furniture_kind_is_refused():
    b = SceneBuilder(np.random.default_rng(0))
    with pytest.raises(ValueError, match="kind must be one of .*'bed'.*got 'piano'"):
        add_furniture(b, _ROOM, "piano", _WALLS)
    with pytest.raises(ValueError, match="'bed' is registered twice"):
        furniture("bed", weight=1.0)(lambda b, room, walls: None)
    assert list(FURNITURE_KINDS)[0] == "bed"  # the failed registration left the table as it was


def test_max_per_room_is_honoured():
    beds = [sum(ob.label == BED for ob in sample_scene(scene_rng(0, 0, i)).objects) for i in range(120)]
    assert max(beds) == 1 and sum(beds) >= 10  # beds are common, never two in a room


def test_every_texture_has_a_pattern_in_range():
    assert set(PATTERNS) == set(Texture)
    rng = np.random.default_rng(0)
    shape = (len(Texture), 50)
    texture = np.repeat(np.array([int(t) for t in Texture], np.int8)[:, None], 50, axis=1)
    u, v = (rng.uniform(-3, 8, shape).astype(np.float32) for _ in range(2))
    freq = rng.uniform(0.5, 100, shape).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, shape + (4,)).astype(np.float32)
    weight, emission = blend_and_emission(texture, u, v, freq, phase)
    assert weight.dtype == emission.dtype == np.float32 and weight.shape == emission.shape == shape
    assert weight.min() >= 0 and weight.max() <= 1 and emission.min() >= 0 and emission.max() <= 1
    emits = {Texture(int(t)) for t in texture[emission.max(axis=1) > 0, 0]}
    assert emits == {Texture.WINDOW, Texture.SCREEN, Texture.EMISSIVE}


def test_outputs_table_is_what_the_renderer_returns_and_the_writer_stores(tmp_path):
    sample = synthesize(0, height=16, width=24)
    assert list(sample) == list(OUTPUTS)
    root = generate_synthetic(tmp_path / "syn", n_train=1, n_val=0, height=16, width=24, workers=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(OUTPUTS)
    assert json.loads((root / "meta.json").read_text())["arrays"] == OUTPUTS
