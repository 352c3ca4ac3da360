from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dogclf.errors import ConfigError, DogclfError, DuplicateError, UnknownBreedError, UnknownLabelSetError
from dogclf.labels import (
    DOGIMAGES_133,
    BreedLabels,
    format_folder_name,
    get_labels,
    list_labels,
    normalize_breed,
    parse_folder_name,
    register_labels,
    unregister_labels,
)

# Breed names as they appear in dogImages: words of letters joined by "_" or "-".
word = st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
breed_name = st.builds(lambda ws, seps: "".join(w + s for w, s in zip(ws, seps + [""])),
                       st.lists(word, min_size=1, max_size=4), st.lists(st.sampled_from(["_", "-"]), max_size=3)
                       ).filter(lambda n: n and n[-1] not in "_-")
unique_breeds = st.lists(breed_name, min_size=1, max_size=20, unique_by=normalize_breed)


def spelling_variant(draw, name: str) -> str:
    chars = []
    for c in name:
        if c in "_-":
            chars.append(draw(st.sampled_from(["_", "-", " ", "  ", "__"])))
        else:
            chars.append(c.upper() if draw(st.booleans()) else c.lower())
    return "".join(chars)


def test_dogimages_set_is_built_in_and_matches_shared_copy(shared_dir):
    labels = get_labels(DOGIMAGES_133)
    assert len(labels) == 133
    assert labels.name == "dogimages-133"
    folders = (shared_dir / "data" / "dogimages_classes.txt").read_text().split()
    assert list(labels.folder_names) == folders


def test_dogimages_known_breeds():
    labels = get_labels("dogimages-133")
    assert labels[0] == "Affenpinscher" and labels[-1] == "Yorkshire_terrier"
    assert labels.index("german shepherd dog") == 70
    assert labels["GERMAN-SHEPHERD_dog"] == 70
    assert labels.index("071.German_shepherd_dog") == 70
    assert labels.display_name(70) == "German shepherd dog"
    assert labels.display_name("chinese shar pei") == "Chinese shar-pei"
    assert labels.folder_name("flat coated retriever") == "068.Flat-coated_retriever"


def test_package_carries_its_own_copy():
    from importlib import resources

    text = resources.files("dogclf.labels").joinpath("data/dogimages_133.txt").read_text()
    assert len(text.split()) == 133


@given(unique_breeds)
def test_json_round_trip(names):
    labels = BreedLabels(names, name="custom")
    again = BreedLabels.from_json(labels.to_json())
    assert again == labels and again.names == tuple(names) and again.name == "custom"


@given(st.integers(min_value=0, max_value=998), breed_name)
def test_folder_name_round_trip(index, name):
    folder = format_folder_name(index, name)
    assert parse_folder_name(folder) == (index, name)


@given(st.data(), unique_breeds)
def test_lookup_under_any_spelling(data, names):
    labels = BreedLabels(names)
    i = data.draw(st.integers(0, len(names) - 1))
    variant = spelling_variant(data.draw, names[i])
    assert labels.index(variant) == i
    assert variant in labels
    assert labels.breed(i) == names[i]


@given(unique_breeds)
def test_from_folder_names_orders_like_imagefolder(names):
    folders = [format_folder_name(i, n) for i, n in enumerate(names)]
    labels = BreedLabels.from_folder_names(reversed(folders))
    assert labels.names == tuple(names)
    assert list(labels.folder_names) == sorted(folders)


@pytest.mark.parametrize("bad", ["71.German", "abc", "", "071.", "071 German", ".German", "000.Zero", "071..x",
                                 "071.a/b"])
def test_malformed_folder_names_are_refused(bad):
    with pytest.raises(ConfigError, match="folder name"):
        parse_folder_name(bad)


@given(st.text(max_size=12))
def test_parse_folder_name_accepts_only_the_numbered_form(text):
    try:
        index, name = parse_folder_name(text)
    except ConfigError:
        return
    assert text == f"{index + 1:0{len(text.split('.', 1)[0])}d}.{name}" and name


def test_unknown_breed_names_the_value_and_suggests():
    labels = get_labels("dogimages-133")
    with pytest.raises(UnknownBreedError, match="'german shepard dog'.*German_shepherd_dog") as info:
        labels.index("german shepard dog")
    assert isinstance(info.value, KeyError) and isinstance(info.value, DogclfError)
    with pytest.raises(UnknownBreedError, match="index 133 out of range"):
        labels.breed(133)


@pytest.mark.parametrize("names,error", [([], ConfigError), (["Pug", "pug"], DuplicateError),
                                          (["Beagle", "Shih-tzu", "shih tzu"], DuplicateError),
                                          (["Pug", ""], ConfigError), ([" Pug"], ConfigError),
                                          (["a/b"], ConfigError), ([3], ConfigError), ("Pug", ConfigError)])
def test_bad_label_sets_are_refused(names, error):
    with pytest.raises(error):
        BreedLabels(names)


def test_from_folder_names_refuses_gaps_and_mixtures():
    with pytest.raises(ConfigError, match="number 3 but sorts at position 2"):
        BreedLabels.from_folder_names(["001.A", "003.B"])
    with pytest.raises(ConfigError, match="numbered form"):
        BreedLabels.from_folder_names(["001.A", "beagle"], strict=False)
    assert BreedLabels.from_folder_names(["pug", "beagle"], strict=False).names == ("beagle", "pug")
    with pytest.raises(ConfigError):
        BreedLabels.from_folder_names(["pug"], strict=True)


def test_from_directory(tmp_path):
    for folder in ["002.Beagle", "001.Akita", ".cache"]:
        (tmp_path / folder).mkdir()
    (tmp_path / "notes.txt").write_text("x")
    labels = BreedLabels.from_directory(tmp_path, name="two")
    assert labels.names == ("Akita", "Beagle")
    with pytest.raises(FileNotFoundError, match="missing"):
        BreedLabels.from_directory(tmp_path / "missing")


def test_immutable_and_hashable():
    labels = BreedLabels(["Pug", "Beagle"])
    with pytest.raises(AttributeError):
        labels.names = ("x",)  # type: ignore[misc]
    assert hash(labels) == hash(BreedLabels(["Pug", "Beagle"]))
    assert labels != BreedLabels(["Beagle", "Pug"])


def test_registry_custom_set_and_refusals():
    name = "test-five-breeds"
    try:
        labels = register_labels(name, ["Beagle", "Pug", "Boxer", "Akita", "Basenji"])
        assert get_labels(name) is labels and labels.name == name
        assert name in list_labels("test-*") and "dogimages-133" not in list_labels("test-*")
        with pytest.raises(DuplicateError, match="already registered"):
            register_labels(name, ["Pug"])
        register_labels(name, ["Pug"], overwrite=True)
        assert len(get_labels(name)) == 1
    finally:
        unregister_labels(name)
    with pytest.raises(UnknownLabelSetError, match="'test-five-breeds'.*'dogimages-133'"):
        get_labels(name)
    for bad in ["", "Has Space", "UPPER", "-lead"]:
        with pytest.raises(ConfigError, match="label set name"):
            register_labels(bad, ["Pug"])
    with pytest.raises(ConfigError):
        register_labels("empty-set", [])


def test_save_load_is_atomic(tmp_path):
    labels = get_labels("dogimages-133")
    path = labels.save(tmp_path / "labels.json")
    assert BreedLabels.load(path) == labels
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]
    assert json.loads(path.read_text())["breeds"][0] == "Affenpinscher"
    with pytest.raises(ConfigError, match="does not parse"):
        BreedLabels.from_json("{not json")
    with pytest.raises(ConfigError, match="unsupported label-set format"):
        BreedLabels.from_dict({"format": "other/9", "breeds": ["Pug"]})
