"""The synthetic generator's output, pinned bit for bit on two small scenes.

Any change to the scene distribution, the ray casting or the shading changes these hashes; a change that was
not meant (a refactor, a reordered random draw, a new default) is caught here.

To change the generator on purpose:
  1. bump ``SYNTHETIC_VERSION`` in ``tensoradapt/data/synthetic/streams.py`` (it seeds every scene and keys the
     dataset cache, so cached datasets of the old generator are rebuilt, never mixed with new ones);
  2. run ``python tests/test_synthetic_pins.py`` and paste what it prints over the block from ``_PINNED_VERSION``
     to ``_IMAGE_SUMS``.

The label, instance, depth and normal arrays only use IEEE-exact numpy arithmetic (and Python's `math` for the
scene), so their hashes hold on every CPU. The image goes through numpy's float32 sin / exp / pow, whose last
bit depends on the SIMD code path numpy picks for the CPU (measured: AVX-512, AVX2 and baseline x86-64 give
three different images, at most 2 ulp apart). Its hash is therefore checked where those functions round as on
the machine that recorded the pins; elsewhere the image is checked by weighted sums within that rounding.
"""
from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np

from tensoradapt.data.synthetic import STREAMS, SYNTHETIC_VERSION, sample_scene, synthesize
from tensoradapt.data.synthetic.streams import scene_rng

#: (stream, index) at 48 x 64, seed 0: between them the two scenes draw every furniture kind.
_SCENES = (("train", 4), ("sam_train", 4))
_HEIGHT, _WIDTH = 48, 64

_PINNED_VERSION = 1
_PINS = {
    ('train', 4): {
        'scene': '8ef2dce7a4d6130d86f3a07148c64481305ca84a079f22266183fa86cd6eec07',
        'image': 'b08f23790a1fded981891424d5e857bea725cbf5cd7ae7405a30d6bd5a283730',
        'label': '82eb07509bcb88f59c1cba43dc90f7f82cde179984f766d6da6589af3454077f',
        'depth': '93fd8b5e3d18141a6e0a4d3f268b5c70af79f643126f8c19236037e8120a79ea',
        'normal': 'b3e3cfccbc728912e68e80661260ba4610129048c6a03b12a124da193a866b49',
        'instance': '08923523d06c4e980cc05e68958468b79ad48dad0c1f4e62378c87e53164ebe2',
    },
    ('sam_train', 4): {
        'scene': '0328e7802857ee5356835da53683399dbd53c0805bdb7291b94e031924aaaf1c',
        'image': 'fb3718c4dc1574faeb2e60472fb1e9565a2c9fbc127418c3c7bf09277c0142b6',
        'label': '1a6924a7934c29fc6380b6aa64d1cc698cfa420b112e207ccc10155411ba775b',
        'depth': '984542c0adf0f80ce377348482fb4a6faad1bd13ee51530a4d2ebb594a3291a5',
        'normal': 'ea7eb45c6e96ba76cf76273d1ce17118ddf157f63976ad57e84b4f6979085650',
        'instance': '6120c8b2ff203ab0605d0f8627fef85e2efa075bb31861b1cdc8995c164602c7',
    },
}
_MATH_PROBE = '9bb95dee20722bdb7b20e446033287615fb46c676ce89900c7323da425029ac2'
_IMAGE_SUMS = {
    ('train', 4): [5946.604079, 28.599899, 25.222898, -83.70108],
    ('sam_train', 4): [6180.759019, 8.043196, 14.469993, -89.725236],
}

# Measured bound on |image difference| between numpy SIMD code paths (2 ulp near 1.0), times the pixel count.
_IMAGE_SUM_TOL = 2.0e-7 * _HEIGHT * _WIDTH * 3


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _scene_bytes(value: object) -> bytes:
    """The values of a sampled scene (dataclass fields in order, arrays, lists, numbers) as bytes."""
    if dataclasses.is_dataclass(value):
        return b"".join(_scene_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return b"[" + b"".join(_scene_bytes(v) for v in value) + b"]"
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value, dtype=np.float64).tobytes()
    return struct.pack("<d", float(value))


def _scene_sha(stream: str, index: int) -> str:
    """sha256 of the scene description: catches a change to the scene even where no pixel shows it."""
    return hashlib.sha256(_scene_bytes(sample_scene(scene_rng(0, STREAMS[stream], index)))).hexdigest()


def _float32_math_probe() -> str:
    """sha256 of numpy's float32 sin, exp and pow on a fixed grid (the shader's transcendentals)."""
    x = np.linspace(-600.0, 600.0, 20001, dtype=np.float32)
    y = np.linspace(0.0, 1.5, 20001, dtype=np.float32)
    return _sha(np.concatenate([np.sin(x), np.exp(-y), y ** (1.0 / 2.2)]))


def _image_sums(image: np.ndarray) -> list[float]:
    """The image's sum and its sums against three fixed +-1 patterns (float64): a cheap, rounding-tolerant
    signature that still moves when any patch of the image changes."""
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(3,) + image.shape)
    img = image.astype(np.float64)
    return [round(float(img.sum()), 6)] + [round(float((img * s).sum()), 6) for s in signs]


def _render(stream: str, index: int) -> dict[str, np.ndarray]:
    return synthesize(index, seed=0, stream=stream, height=_HEIGHT, width=_WIDTH)


def current_pins() -> str:
    """The source lines of the pins for the current generator (what `python tests/test_synthetic_pins.py`
    prints)."""
    pins, sums = {}, {}
    for stream, index in _SCENES:
        sample = _render(stream, index)
        pins[(stream, index)] = {"scene": _scene_sha(stream, index)} | {k: _sha(v) for k, v in sample.items()}
        sums[(stream, index)] = _image_sums(sample["image"])
    lines = [f"_PINNED_VERSION = {SYNTHETIC_VERSION}", "_PINS = {"]
    for key, hashes in pins.items():
        lines.append(f"    {key!r}: {{")
        lines += [f"        {k!r}: {v!r}," for k, v in hashes.items()]
        lines.append("    },")
    lines += ["}", f"_MATH_PROBE = {_float32_math_probe()!r}", "_IMAGE_SUMS = {"]
    lines += [f"    {key!r}: {v!r}," for key, v in sums.items()]
    lines.append("}")
    return "\n".join(lines)


_HOW_TO_UPDATE = ("if the generator was changed on purpose, bump SYNTHETIC_VERSION and paste the output of "
                  "`python tests/test_synthetic_pins.py` into this file; otherwise undo the change")


def test_pins_are_for_this_version():
    assert _PINNED_VERSION == SYNTHETIC_VERSION, f"the pins are for SYNTHETIC_VERSION {_PINNED_VERSION}: " \
                                                 + _HOW_TO_UPDATE


def test_rendered_scenes_match_their_pins():
    exact_image = _float32_math_probe() == _MATH_PROBE
    for stream, index in _SCENES:
        sample = _render(stream, index)
        pins = _PINS[(stream, index)]
        assert _scene_sha(stream, index) == pins["scene"], f"{stream}/{index}: the sampled scene differs " \
                                                            "from its pin; " + _HOW_TO_UPDATE
        assert sorted(sample) == sorted(set(pins) - {"scene"}), f"renderer outputs changed: {sorted(sample)}; " \
                                                                 + _HOW_TO_UPDATE
        for key, array in sample.items():
            if key == "image" and not exact_image:
                np.testing.assert_allclose(_image_sums(array), _IMAGE_SUMS[(stream, index)], rtol=0,
                                           atol=_IMAGE_SUM_TOL, err_msg=f"{stream}/{index} image; " + _HOW_TO_UPDATE)
                continue
            assert _sha(array) == pins[key], f"{stream}/{index} {key} differs from its pin; " + _HOW_TO_UPDATE


def test_pin_catches_a_one_ulp_change():
    """The guard itself: a single value moved by one ulp must change the hash (and a patch the image sums)."""
    sample = _render(*_SCENES[0])
    depth = sample["depth"].copy()
    depth.flat[123] = np.nextafter(depth.flat[123], np.float32(np.inf))
    assert _sha(depth) != _sha(sample["depth"])
    image = sample["image"].copy()
    image[10:14, 20:24] += np.float32(0.01)
    assert np.abs(np.subtract(_image_sums(image), _image_sums(sample["image"]))).max() > _IMAGE_SUM_TOL


if __name__ == "__main__":  # pragma: no cover - prints the pins for a deliberate generator change
    print(current_pins())
