"""Template prompts, their augmented views, vocabularies and class-name sources."""

from __future__ import annotations

import random
import re

import pytest

from clap_edge.core.errors import PromptError
from clap_edge.prompts import (
    AugmentConfig,
    Prompt,
    PromptVocab,
    augment,
    augmented_texts,
    distinct_views,
    load_class_names,
    template_prompts,
    template_records,
)

VOCAB = PromptVocab()


def test_480_prompts_per_class_with_the_papers_examples():
    prompts = template_prompts("dog")
    assert len(prompts) == 480 == VOCAB.prompts_per_class
    assert len(set(prompts)) == 480
    assert "a realistic painting of a large red dog" in prompts
    assert "an impressionistic sketch of a small multicolored dog" in prompts
    assert "a realistic photograph of an orange dog" not in prompts  # every prompt has a size word
    assert all(p.endswith(" dog") for p in prompts)
    elephant = template_prompts("elephant")
    assert "an impressionistic sketch of a small multicolored elephant" in elephant


def test_article_follows_the_next_word():
    prompts = template_prompts("owl", PromptVocab(image_types=("artwork",), sizes=("",), art_styles=("",),
                                                  colors=("",)))
    assert prompts == ["an artwork of an owl"]


def _words(prompt_text: str) -> set[str]:
    return set(prompt_text.split())


def test_augmented_view_drops_only_size_and_colour_by_default():
    rng = random.Random(0)
    records = template_records("dog")
    seen_drop_size = seen_drop_color = seen_reorder = seen_plain = False
    for record in records:
        view = augment(record, rng)
        assert view.class_name == "dog"
        assert view.image_type == record.image_type and view.art_style == record.art_style  # p = 0: kept
        assert view.size in (record.size, None) and view.color in (record.color, None)
        seen_drop_size |= view.size is None
        seen_drop_color |= view.color is None
        seen_reorder |= view.reordered
        seen_plain |= not view.reordered
        text = view.text()
        assert "dog" in text and record.image_type in text and record.art_style in text
    assert seen_drop_size and seen_drop_color and seen_reorder and seen_plain


def test_reordered_form_is_y_in_x_style():
    record = template_records("dog")[0]
    view = augment(record, random.Random(0), AugmentConfig(p_drop_size=1, p_drop_color=1, p_reorder=1))
    assert view.text() == f"a dog in a {record.art_style} {record.image_type} style"
    kept = augment(record, random.Random(0), AugmentConfig(p_drop_size=0, p_drop_color=0, p_reorder=1))
    assert kept.text() == f"a {record.size} {record.color} dog in a {record.art_style} {record.image_type} style"
    # the authors' __reverse_prompt on "an impressionistic sketch of a small orange dog", by hand:
    prompt = Prompt("dog", "sketch", "small", "impressionistic", "orange")
    assert prompt.text() == "an impressionistic sketch of a small orange dog"
    flipped = augment(prompt, random.Random(0), AugmentConfig(p_drop_size=0, p_drop_color=0, p_reorder=1))
    assert flipped.text() == "a small orange dog in an impressionistic sketch style"
    bare = augment(prompt, random.Random(0), AugmentConfig(p_drop_size=0, p_drop_color=0, p_reorder=1,
                                                           reorder_article=False))
    assert bare.text() == "a small orange dog in impressionistic sketch style"
    assert re.fullmatch(r"an? \w+ \w+ of an? .* dog", record.text())


def test_drop_probabilities_are_respected_statistically():
    rng = random.Random(1)
    config = AugmentConfig(p_drop_size=0.2, p_drop_color=0.8, p_reorder=0.5)
    views = [augment(r, rng, config) for r in template_records("cat") * 5]
    frac_size = sum(v.size is None for v in views) / len(views)
    frac_color = sum(v.color is None for v in views) / len(views)
    assert 0.15 < frac_size < 0.25 and 0.75 < frac_color < 0.85


def test_replace_mode_swaps_words_from_the_same_list():
    rng = random.Random(2)
    config = AugmentConfig(p_drop_size=1.0, p_drop_color=1.0, p_reorder=0.0, replace=True)
    for record in template_records("car")[:50]:
        view = augment(record, rng, config)
        assert view.size in VOCAB.sizes and view.size != record.size
        assert view.color in VOCAB.colors and view.color != record.color


def test_augmentation_is_seeded_and_deterministic():
    a = augmented_texts("horse", seed=3)
    assert a == augmented_texts("horse", seed=3)
    assert a != augmented_texts("horse", seed=4)
    assert len(a) == 480


def test_distinct_views_cover_every_sampled_view():
    record = template_records("guitar")[7]
    views = distinct_views(record)
    assert len(views) == len(set(views)) == 8  # size kept/dropped x colour kept/dropped x order
    rng = random.Random(0)
    assert {augment(record, rng) for _ in range(300)} <= set(views)
    with pytest.raises(PromptError, match="replace"):
        distinct_views(record, AugmentConfig(replace=True))


def test_vocab_from_toml_and_yaml(tmp_path):
    toml = tmp_path / "v.toml"
    toml.write_text('image_types = ["photo", "sketch"]\nsizes = ["big"]\nart_styles = ["plain"]\ncolors = ["red"]\n')
    vocab = PromptVocab.from_file(toml)
    assert vocab.prompts_per_class == 2
    assert template_prompts("dog", vocab) == ["a plain photo of a big red dog", "a plain sketch of a big red dog"]
    yaml = tmp_path / "v.yaml"
    yaml.write_text("image_types: [photo]\nsizes: [big, small]\nart_styles: [plain]\ncolors: [red]\n")
    assert PromptVocab.from_file(yaml).prompts_per_class == 2
    assert vocab.fingerprint() != PromptVocab.from_file(yaml).fingerprint()


def test_bad_vocab_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('shapes = ["round"]\n')
    with pytest.raises(PromptError, match="unknown vocabulary slots"):
        PromptVocab.from_file(bad)
    empty = tmp_path / "empty.toml"
    empty.write_text("image_types = []\n")
    with pytest.raises(PromptError, match="empty"):
        PromptVocab.from_file(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("sizes: [big, small\ncolors: red\n")
    with pytest.raises(PromptError, match="broken.yaml.*invalid YAML"):
        PromptVocab.from_file(broken)
    scalar = tmp_path / "scalar.yaml"  # a bare word would otherwise become a tuple of its letters
    scalar.write_text("image_types: [photo]\nsizes: big\nart_styles: [plain]\ncolors: [red]\n")
    with pytest.raises(PromptError, match=r"scalar.yaml.*\['sizes'\].*list of words"):
        PromptVocab.from_file(scalar)


def test_class_list_that_is_not_text(tmp_path):
    binary = tmp_path / "classes.txt"
    binary.write_bytes(b"\xff\xfe\x00dog")
    with pytest.raises(PromptError, match="classes.txt.*UTF-8"):
        load_class_names(binary)


def test_class_names_from_comma_list_file_and_folders(tmp_path):
    assert load_class_names("dog, cat,house") == ["dog", "cat", "house"]
    names = tmp_path / "classes.txt"
    names.write_text("# PACS\ndog\n\nelephant\n")
    assert load_class_names(names) == ["dog", "elephant"]
    flat = tmp_path / "flat"
    for cls in ("dog", "tennis_ball"):
        (flat / cls).mkdir(parents=True)
        (flat / cls / "0.jpg").write_bytes(b"")
    assert load_class_names(flat) == ["dog", "tennis ball"]
    nested = tmp_path / "nested"
    for domain, cls in (("photo", "dog"), ("photo", "cat"), ("sketch", "dog"), ("sketch", "horse")):
        (nested / domain / cls).mkdir(parents=True)
        (nested / domain / cls / "0.png").write_bytes(b"")
    assert load_class_names(nested) == ["cat", "dog", "horse"]


def test_duplicate_classes_are_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="duplicate class 'dog'"):
        assert load_class_names("dog,cat,dog") == ["dog", "cat"]


def test_empty_class_list_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(PromptError, match="no class names"):
        load_class_names(empty)
    with pytest.raises(PromptError, match="no class names"):
        load_class_names(" , ,")
    with pytest.raises(PromptError, match="no such file"):
        load_class_names(str(tmp_path / "missing.txt"))
