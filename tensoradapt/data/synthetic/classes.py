"""The 13 NYUv2 semantic classes the generator labels pixels with (and the unlabelled id)."""
from __future__ import annotations

__all__ = [
    "CLASSES", "NUM_CLASSES", "UNLABELLED", "BED", "BOOKS", "CEILING", "CHAIR", "FLOOR", "FURNITURE", "OBJECTS",
    "PAINTING", "SOFA", "TABLE", "TV", "WALL", "WINDOW",
]

#: The 13 NYUv2 classes (Couprie et al. 2013 mapping, as in the preprocessed NYUv2 used by MTAN/LibMTL).
CLASSES: tuple[str, ...] = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "painting", "sofa", "table", "tv", "wall", "window",
)
NUM_CLASSES = len(CLASSES)
(BED, BOOKS, CEILING, CHAIR, FLOOR, FURNITURE, OBJECTS,
 PAINTING, SOFA, TABLE, TV, WALL, WINDOW) = range(NUM_CLASSES)
#: Label of pixels no class covers (clutter); NYUv2's ignore label.
UNLABELLED = -1
