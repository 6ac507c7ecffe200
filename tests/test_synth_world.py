"""The synthetic world: determinism, exact COCO masks, unique referring expressions,
difficulty buckets, colour/category independence, the refs pickle and the CLI."""

from __future__ import annotations

import itertools
import json
import pickle
import pickletools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regiongpt.cli.main import main
from regiongpt.data.native import read_native_jsonl
from regiongpt.data.synth import CATEGORIES, COLOUR_NAMES, generate_scene, generate_scenes, resolve, write_world
from regiongpt.data.synth.annotate import existence_negatives, present_pairs
from regiongpt.data.synth.world import DIFFICULTY_TAGS, INVERSE_RELATION, SIMILAR
from regiongpt.errors import InvalidInputError
from regiongpt.processing.instructions import NO_MATCH_ANSWER, parse_rec_answer
from regiongpt.processing.rle import decode_rle

N_SMALL = 8
SEED = 7


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "out"
    write_world(out, images=N_SMALL, seed=SEED, val_fraction=0.25, progress=False)
    return out


@pytest.fixture(scope="module")
def draw() -> list:
    """A big in-memory draw (no files written); the first 200 scenes are the difficulty draw."""
    return generate_scenes(600, seed=123)


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(world, tmp_path):
    again = tmp_path / "again"
    write_world(again, images=N_SMALL, seed=SEED, val_fraction=0.25, progress=False)
    first, second = _files(world), _files(again)
    assert first.keys() == second.keys()
    for name, path in first.items():
        if name.endswith(".png"):
            assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(second[name]))), name
        assert path.read_bytes() == second[name].read_bytes(), name
    other = tmp_path / "other"
    write_world(other, images=2, seed=SEED + 1, progress=False)
    assert (other / "images" / "000001.png").read_bytes() != (world / "images" / "000001.png").read_bytes()


def test_expected_layout(world):
    names = set(_files(world))
    for name in [
        "instances.json",
        "refcocog/refs(umd).p",
        "refcocog/instances.json",
        "pope/synth_pope_random.jsonl",
        "pope/synth_pope_popular.jsonl",
        "pope/synth_pope_adversarial.jsonl",
        "native/train.jsonl",
        "native/val.jsonl",
        "meta.json",
        "README.md",
        "gallery.png",
    ]:
        assert name in names
    assert sum(n.startswith("images/") for n in names) == N_SMALL
    assert not [n for n in names if n.endswith(".tmp")]
    meta = json.loads((world / "meta.json").read_text())
    assert meta["seed"] == SEED and meta["images"] == N_SMALL and meta["categories"] == list(CATEGORIES)
    assert meta["splits"] == {"train": 6, "val": 2}


def test_coco_instances_load_in_pycocotools_and_masks_are_exact(world):
    coco_module = pytest.importorskip("pycocotools.coco")
    coco = coco_module.COCO(str(world / "instances.json"))
    scenes = generate_scenes(N_SMALL, seed=SEED)
    assert sorted(c["id"] for c in coco.loadCats(coco.getCatIds())) == list(range(1, len(CATEGORIES) + 1))
    for image_id, scene in enumerate(scenes, start=1):
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == scene.image.shape[:2]
        pixels = np.asarray(Image.open(world / "images" / info["file_name"]).convert("RGB"))
        assert np.array_equal(pixels, scene.image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(scene.objects)
        for ann, obj in zip(anns, scene.objects):
            assert np.array_equal(coco.annToMask(ann).astype(bool), obj.mask)
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == list(obj.box)
            assert ann["area"] == int(obj.mask.sum()) and ann["iscrowd"] == 0
            assert coco.loadCats(ann["category_id"])[0]["name"] == obj.category
    assert (world / "refcocog" / "instances.json").read_bytes() == (world / "instances.json").read_bytes()


def test_refs_pickle_holds_only_plain_types(world):
    data = (world / "refcocog" / "refs(umd).p").read_bytes()
    opcodes = {op.name for op, _, _ in pickletools.genops(data)}
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
    refs = pickle.loads(data)

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return type(value) in (str, int)

    assert isinstance(refs, list) and refs and plain(refs)
    instances = json.loads((world / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    for ref in refs:
        assert set(ref) == {"ref_id", "ann_id", "image_id", "category_id", "split", "sentences", "sent_ids", "file_name"}
        assert ref["split"] in {"train", "val", "test"}
        assert anns[ref["ann_id"]]["image_id"] == ref["image_id"]
        assert anns[ref["ann_id"]]["category_id"] == ref["category_id"]
        assert ref["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]
        for sentence in ref["sentences"]:
            assert sentence["tokens"] == sentence["sent"].split() and sentence["raw"] == sentence["sent"]
    assert {r["split"] for r in refs} == {"train", "val", "test"}


def test_every_referring_expression_resolves_to_exactly_its_object(draw):
    total = with_ref = 0
    for scene in draw[:200]:
        for i, obj in enumerate(scene.objects):
            total += 1
            with_ref += bool(obj.referring)
            assert len(obj.referring) == len(obj.referring_forms)
            for text, form in zip(obj.referring, obj.referring_forms):
                assert form.text() == text
                assert resolve(scene, form) == {i}, (text, obj.brief)
    assert with_ref / total > 0.99


def test_resolver_handles_relations_and_extremes(draw):
    kinds = Counter()
    for scene in draw[:200]:
        for obj in scene.objects:
            for form in obj.referring_forms:
                kinds["relation" if form.relation else "extreme" if form.extreme else "attributes"] += 1
    assert kinds["attributes"] > 0 and kinds["relation"] > 0


def test_each_difficulty_bucket_is_populated(draw):
    counts = Counter(tag for scene in draw[:200] for obj in scene.objects for tag in obj.tags)
    for tag in DIFFICULTY_TAGS:
        assert counts[tag] > 0, tag
    assert any(len(scene.objects) >= 6 for scene in draw[:200])
    assert any(len(scene.objects) == 1 for scene in draw[:200])


def test_colour_is_independent_of_category(draw):
    combos = Counter((obj.category, obj.colour) for scene in draw for obj in scene.objects)
    missing = [pair for pair in itertools.product(CATEGORIES, COLOUR_NAMES) if pair not in combos]
    assert not missing
    for category in CATEGORIES:
        per = [combos[(category, colour)] for colour in COLOUR_NAMES]
        assert max(per) / sum(per) < 0.3, category


def test_relations_are_consistent_and_tags_match_annotations(draw):
    for scene in draw[:100]:
        for i, obj in enumerate(scene.objects):
            for rel, j in obj.relations:
                assert (INVERSE_RELATION[rel], i) in scene.objects[j].relations
            x1, y1, x2, y2 = obj.box
            rows, cols = np.nonzero(obj.mask)
            assert (x1, y1, x2, y2) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            assert ("distractor" in obj.tags) == any(o.category == obj.category for o in scene.objects if o is not obj)
            assert obj.brief == f"{obj.size} {obj.colour} {obj.texture} {obj.category}"
        union = np.zeros(scene.image.shape[:2], dtype=int)
        for obj in scene.objects:
            union += obj.mask
        assert union.max() <= 1  # visible masks never overlap


def test_non_square_scenes():
    scene = generate_scene(np.random.default_rng(0), 320, 160)
    assert scene.image.shape == (160, 320, 3) and scene.image.dtype == np.uint8
    assert all(obj.mask.shape == (160, 320) for obj in scene.objects)


def test_adversarial_negatives_are_absent_and_similar(draw):
    import random

    for scene in draw[:50]:
        pairs = present_pairs(scene)
        present = {c for _, c in pairs}
        for phrase in existence_negatives(pairs, random.Random(0), "adversarial", 4):
            words = phrase.split()
            if len(words) == 1:
                assert words[0] not in present and any(words[0] in SIMILAR[c] for c in present)
            else:
                assert tuple(words) not in set(pairs) and words[1] in present


def test_pope_and_native_files(world):
    for setting in ("random", "popular", "adversarial"):
        rows = [json.loads(line) for line in (world / "pope" / f"synth_pope_{setting}.jsonl").read_text().splitlines()]
        assert rows and all(set(r) == {"question_id", "image", "text", "label"} for r in rows)
        labels = Counter(r["label"] for r in rows)
        assert labels["yes"] == labels["no"]
        assert all(r["text"].startswith("Is there a ") and r["text"].endswith(" in the image?") for r in rows)
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
    native_dir = world / "native"
    samples = list(read_native_jsonl(native_dir / "train.jsonl")) + list(read_native_jsonl(native_dir / "val.jsonl"))
    assert len(samples) == N_SMALL
    scenes = generate_scenes(N_SMALL, seed=SEED)
    for sample, scene in zip(sorted(samples, key=lambda s: s.id[-6:]), scenes):
        assert sample.image_path().is_file()
        assert len(sample.regions) == len(scene.objects)
        for region, obj in zip(sample.regions, scene.objects):
            assert np.array_equal(decode_rle(region.mask), obj.mask)
            assert region.attributes["brief"] == obj.brief and region.attributes["referring"] == list(obj.referring)
        humans = sample.conversations[0::2]
        answers = sample.conversations[1::2]
        tasks = Counter(turn["task"] for turn in humans)
        assert tasks["classify"] == len(scene.objects) and tasks["brief"] == len(scene.objects)
        assert tasks["existence"] >= 1
        for human, answer in zip(humans, answers):
            if human["task"] == "classify":
                assert answer["value"] in CATEGORIES
            if human["task"] == "rec" and answer["value"] != NO_MATCH_ANSWER:
                k = parse_rec_answer(answer["value"])
                phrase = human["value"].split("'")[1]
                assert phrase in scene.objects[k].referring
            if human["task"] == "existence":
                assert answer["value"] in ("Yes.", "No.")
                # the evidence: every object of the asked category (in the asked colour, if one is named)
                text = " " + human["value"].replace("?", " ") + " "
                named = [k for k, obj in enumerate(scene.objects, start=1) if f" {obj.category} " in text
                         and (f" {obj.colour} {obj.category} " in text
                              or not any(f" {c} {obj.category} " in text for c in COLOUR_NAMES))]
                assert answer["evidence"] == (named if answer["value"] == "Yes." else [])
                assert (answer["value"] == "Yes.") == bool(named)


def test_dense_conversations_ask_every_expression_and_every_category(world, tmp_path):
    dense = tmp_path / "dense"
    write_world(dense, images=N_SMALL, seed=SEED, val_fraction=0.25, progress=False, rec_per_image=None,
                existence_per_image=None)
    assert json.loads((dense / "meta.json").read_text())["rec_per_image"] == "all"
    for name in ("instances.json", "refcocog/refs(umd).p", "pope/synth_pope_random.jsonl", "images/000001.png"):
        assert (dense / name).read_bytes() == (world / name).read_bytes(), name  # only the conversations differ
    samples = sorted(read_native_jsonl(dense / "native" / "train.jsonl"), key=lambda s: s.id)
    samples += sorted(read_native_jsonl(dense / "native" / "val.jsonl"), key=lambda s: s.id)
    scenes = generate_scenes(N_SMALL, seed=SEED)
    for sample, scene in zip(sorted(samples, key=lambda s: s.id[-6:]), scenes):
        turns = list(zip(sample.conversations[0::2], sample.conversations[1::2]))
        rec = [(h["value"].split("'")[1], a["value"]) for h, a in turns if h["task"] == "rec"]
        assert len(rec) == sum(len(o.referring) for o in scene.objects)
        for phrase, answer in rec:
            if answer != NO_MATCH_ANSWER:
                assert phrase in scene.objects[parse_rec_answer(answer)].referring
        asked = {}
        for human, answer in turns:
            if human["task"] == "existence":
                words = " " + human["value"].replace("?", " ").replace(".", " ") + " "
                phrase = next(p for p in sorted([*CATEGORIES, *(f"{c} {k}" for c in COLOUR_NAMES for k in CATEGORIES)],
                                                key=len, reverse=True) if f" {p} " in words)
                asked[phrase] = answer["value"]
                colour, _, category = phrase.rpartition(" ")
                assert answer["evidence"] == [k for k, obj in enumerate(scene.objects, start=1)
                                              if obj.category == category and colour in ("", obj.colour)]
        pairs = set(present_pairs(scene))
        present = {category for _, category in pairs}
        assert {c: asked[c] for c in CATEGORIES} == {c: "Yes." if c in present else "No." for c in CATEGORIES}
        coloured = {p: a for p, a in asked.items() if " " in p}
        assert len(coloured) >= len(present)  # each present category in its colour (and, mostly, another)
        assert all((a == "Yes.") == (tuple(p.split(" ")) in pairs) for p, a in coloured.items())
    with pytest.raises(InvalidInputError, match="rec_per_image"):
        write_world(tmp_path / "bad", images=1, rec_per_image=-1, progress=False)


def test_checked_rec_answers_describe_each_candidate_up_to_the_referred_one(world, tmp_path):
    checked = tmp_path / "checked"
    write_world(checked, images=N_SMALL, seed=SEED, val_fraction=0.25, progress=False, rec_answers="checked")
    assert json.loads((checked / "meta.json").read_text())["rec_answers"] == "checked"
    for name in ("instances.json", "refcocog/refs(umd).p", "pope/synth_pope_random.jsonl"):
        assert (checked / name).read_bytes() == (world / name).read_bytes(), name  # only the conversations differ
    samples = [*read_native_jsonl(checked / "native" / "train.jsonl"), *read_native_jsonl(checked / "native" / "val.jsonl")]
    scenes = generate_scenes(N_SMALL, seed=SEED)
    seen = 0
    for sample, scene in zip(sorted(samples, key=lambda s: s.id[-6:]), scenes):
        for human, answer in zip(sample.conversations[0::2], sample.conversations[1::2]):
            if human["task"] != "rec":
                continue
            seen += 1
            phrase, checks = human["value"].split("'")[1], answer["value"].split(". ")
            k = parse_rec_answer(answer["value"])
            last = len(scene.objects) - 1 if k is None else k
            for i in range(last + 1):  # every candidate up to the choice: its brief caption, then yes/no
                verdict = "yes" if i == k else "no"
                assert checks[i].rstrip(".") == f"Region [{i + 1}]: {scene.objects[i].brief}, {verdict}"
            if k is None:
                assert answer["value"].endswith(NO_MATCH_ANSWER)
            else:
                assert phrase in scene.objects[k].referring and answer["value"].endswith(f"So it is Region [{k + 1}].")
    assert seen
    with pytest.raises(InvalidInputError, match="rec_answers must be one of direct, checked"):
        write_world(tmp_path / "bad", images=1, rec_answers="cot", progress=False)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--images", "3", "--seed", "5", "--width", "200", "--height", "120", "--val-fraction", "0.34"]) == 0
    assert "wrote 3 images" in capsys.readouterr().out
    assert Image.open(out / "images" / "000001.png").size == (200, 120)
    assert main(["synth", str(out), "--images", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err
    assert main(["synth", str(out), "--images", "2", "--overwrite", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000001.png", "000002.png"]
    assert main(["synth", str(tmp_path / "x"), "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err
    assert main(["synth", str(out), "--images", "1", "--overwrite", "--quiet", "--rec-per-image", "all",
                 "--existence-per-image", "3"]) == 0
    assert json.loads((out / "meta.json").read_text())["existence_per_image"] == 3
    assert main(["synth", str(out), "--images", "1", "--overwrite", "--quiet", "--rec-answers", "checked"]) == 0
    assert json.loads((out / "meta.json").read_text())["rec_answers"] == "checked"
    with pytest.raises(SystemExit):
        main(["synth", str(out), "--rec-per-image", "some"])
    assert "expected a count >= 0 or 'all'" in capsys.readouterr().err


def test_bad_arguments_raise_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="--images"):
        write_world(tmp_path / "a", images=0, progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="not a folder"):
        write_world(blocker, images=1, progress=False)
    with pytest.raises(InvalidInputError, match="val-fraction"):
        write_world(tmp_path / "b", images=1, val_fraction=1.5, progress=False)
    with pytest.raises(InvalidInputError, match="cannot write|not a folder"):
        write_world(blocker / "sub", images=1, progress=False)


def test_training_existence_questions_cannot_be_answered_from_their_text(draw):
    """Every category, and colour-qualified phrases as a whole, are about as often present as absent."""
    import random

    from regiongpt.data.synth.conversation import build_conversation

    rng = random.Random(0)
    answers: dict[str, Counter] = {}
    for scene in draw:
        conversation = build_conversation(scene, rng, existence_per_image=1)
        pairs = present_pairs(scene)
        for human, answer in zip(conversation[0::2], conversation[1::2]):
            if human["task"] != "existence":
                continue
            words = human["value"].split()
            category = next(w.strip("?.,") for w in reversed(words) if w.strip("?.,") in CATEGORIES)
            coloured = words[words.index(category) - 1] in COLOUR_NAMES if category in words else False
            is_yes = answer["value"] == "Yes."
            named = [k + 1 for k, (_, c) in enumerate(pairs) if c == category]
            assert is_yes == bool(answer["evidence"]) and set(answer["evidence"]) <= set(named)
            for key in (category, "coloured" if coloured else "bare"):
                answers.setdefault(key, Counter())[is_yes] += 1
    assert set(CATEGORIES) <= set(answers) and {"coloured", "bare"} <= set(answers)
    for key, counts in answers.items():
        share = counts[True] / (counts[True] + counts[False])
        assert 0.3 <= share <= 0.7, (key, counts)


def test_referring_rec_phrases_ask_both_expressions_and_favour_shared_categories(draw):
    """``rec_phrases="referring"``: each phrase is one of its object's referring expressions, as
    many questions as the "first" style, more of them second expressions and about objects that
    share their category. "either": the objects "first" asks, those that share their category by
    either expression, the others by their first."""
    import random

    from regiongpt.data.synth.conversation import build_conversation

    counts, shared_share, second_share, second_lone = {}, {}, {}, {}
    for style in ("first", "referring", "either"):
        rng = random.Random(0)
        asked = shared = second = lone_second = 0
        for scene in draw[:200]:
            conversation = build_conversation(scene, rng, rec_per_image=4, rec_phrases=style)
            for human, answer in zip(conversation[0::2], conversation[1::2]):
                if human["task"] != "rec" or answer["value"] == NO_MATCH_ANSWER:
                    continue
                phrase, k = human["value"].split("'")[1], parse_rec_answer(answer["value"])
                assert phrase in scene.objects[k].referring, (style, phrase)
                asked += 1
                second += phrase != scene.objects[k].referring[0]
                category = scene.objects[k].category
                is_shared = sum(o.category == category for o in scene.objects) > 1
                shared += is_shared
                lone_second += phrase != scene.objects[k].referring[0] and not is_shared
        counts[style], shared_share[style], second_share[style] = asked, shared / asked, second / asked
        second_lone[style] = lone_second
    assert abs(counts["referring"] - counts["first"]) <= 0.1 * counts["first"]  # the same number of questions
    assert shared_share["referring"] > shared_share["first"] + 0.05
    assert second_share["first"] == 0 and second_share["referring"] > 0.3
    assert abs(counts["either"] - counts["first"]) <= 0.05 * counts["first"]
    assert abs(shared_share["either"] - shared_share["first"]) < 0.03  # the same objects asked
    assert second_share["either"] > 0.1 and second_lone["either"] == 0 and second_lone["referring"] > 0
    with pytest.raises(ValueError, match="rec_phrases"):
        build_conversation(draw[0], random.Random(0), rec_phrases="longest")


def test_both_rec_phrases_add_the_shared_objects_other_expressions_to_what_first_asks(draw):
    """``rec_phrases="both"``: as many first expressions as "first" asks, then, up to the count,
    the other expressions of objects that share their category (never a lone object's), so no kind
    of phrase is asked less often than with "first"."""
    import random

    from regiongpt.data.synth.conversation import rec_questions

    kinds = {"first": Counter(), "both": Counter()}
    extra = 0
    for scene in draw[:200]:
        referable = [k for k, obj in enumerate(scene.objects) if obj.referring_forms]
        shared = {k for k in referable
                  if sum(o.category == scene.objects[k].category for o in scene.objects) > 1}
        everything = rec_questions(scene, random.Random(0), 99, "both")
        assert sorted((k, f.text()) for k, f in everything) == sorted(
            [(k, scene.objects[k].referring_forms[0].text()) for k in referable]
            + [(k, f.text()) for k in shared for f in scene.objects[k].referring_forms[1:]])
        for style in kinds:
            asked = rec_questions(scene, random.Random(1), 4, style)
            firsts = [k for k, f in asked if f is scene.objects[k].referring_forms[0]]
            assert len(firsts) == min(4, len(referable)) and len(set(firsts)) == len(firsts)
            others = [k for k, f in asked if f is not scene.objects[k].referring_forms[0]]
            assert set(others) <= shared and len(asked) <= 4
            extra += len(others) if style == "both" else 0
            for _, form in asked:
                kinds[style].update(name for name in ("colour", "texture", "size") if getattr(form, name))
    assert extra > 0
    for name in ("colour", "texture", "size"):
        assert kinds["both"][name] >= kinds["first"][name], (name, kinds)
    assert kinds["both"]["texture"] > kinds["first"]["texture"]


def test_no_match_rec_questions_cannot_be_told_from_their_wording(draw):
    """No-match REC phrases have the form of the positives (the same attributes named), so a colour
    word is no sign of "No corresponding options found."; each matches nothing in its scene."""
    import random

    from regiongpt.data.synth.conversation import REC_NEGATIVE_PROBABILITY, absent_like, build_conversation

    rng = random.Random(1)
    by_form: dict[tuple, Counter] = {}
    for scene in draw:
        conversation = build_conversation(scene, rng, rec_per_image=6)
        for human, answer in zip(conversation[0::2], conversation[1::2]):
            if human["task"] != "rec":
                continue
            words = human["value"].split("'")[1].split()
            form = (any(w in COLOUR_NAMES for w in words), len(words))  # (names a colour, length)
            by_form.setdefault(form, Counter())[answer["value"] == NO_MATCH_ANSWER] += 1
    for form, counts in by_form.items():
        if sum(counts.values()) >= 200:
            assert counts[True] / sum(counts.values()) < 2.5 * REC_NEGATIVE_PROBABILITY, (form, counts)
    named = ("size", "colour", "texture")
    for scene in draw[:100]:
        for obj in scene.objects:
            for like in obj.referring_forms:
                phrase = absent_like(scene, rng, like)
                assert not resolve(scene, phrase) and not phrase.relation and not phrase.extreme
                same_form = [getattr(phrase, a) is None for a in named] == [getattr(like, a) is None for a in named]
                assert same_form or (phrase.colour and not phrase.size and not phrase.texture)  # the fallback
