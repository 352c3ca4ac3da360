"""Breed labels: the :class:`BreedLabels` value object and a registry of named label sets.

A label set is the ordered list of breeds a model predicts; index ``i`` of the model's output is breed ``i``.
The 133 breeds of the dogImages dataset are built in as ``"dogimages-133"``::

    >>> from dogclf.labels import get_labels
    >>> labels = get_labels("dogimages-133")
    >>> len(labels), labels.index("german shepherd dog"), labels.folder_name(70)
    (133, 70, '071.German_shepherd_dog')

Custom label sets work the same way::

    >>> from dogclf.labels import register_labels
    >>> mine = register_labels("doc-example-3", ["Beagle", "Pug", "Boxer"])
    >>> mine.display_name("pug")
    'Pug'
"""

from dogclf.labels._core import BreedLabels, format_folder_name, normalize_breed, parse_folder_name
from dogclf.labels._registry import DOGIMAGES_133, get_labels, list_labels, register_labels, unregister_labels

__all__ = [
    "BreedLabels",
    "DOGIMAGES_133",
    "format_folder_name",
    "get_labels",
    "list_labels",
    "normalize_breed",
    "parse_folder_name",
    "register_labels",
    "unregister_labels",
]
