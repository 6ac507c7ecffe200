"""bench/rec_oracle.py: its prompts single out their answer, and every variant trains a step."""

from __future__ import annotations

import json
import random
import sys
from argparse import Namespace

import pytest
from conftest import load_bench_script


def _oracle():
    return load_bench_script("rec_oracle")


def _args(**changes) -> Namespace:
    base = dict(min_candidates=3, max_candidates=8, filler=0, phrase_first=False, number_as_text=False,
                text_regions=False, verify=False, describe=False, size_phrases=False)
    return Namespace(**{**base, **changes})


@pytest.mark.parametrize("layout", [{}, {"text_regions": True}, {"number_as_text": True}])
def test_each_question_names_exactly_its_answer(layout):
    oracle = _oracle()
    vocab, rng = oracle.Vocabulary(), random.Random(0)
    for _ in range(200):
        ids, positions, embedded, numbers, answers, answer_positions, n = oracle.make_prompt(
            rng, vocab, _args(**layout), queries=3)
        assert len(answers) == len(answer_positions) == 3 and 3 <= n <= 8
        assert all(ids[p] == vocab.words["["] for p in answer_positions)
        assert len(positions) == (0 if layout.get("text_regions") else n)
        for q, position in enumerate(answer_positions):
            opening, closing = [i for i in range(position) if ids[i] == vocab.words["'"]][-2:]
            assert ids[opening + 1] == vocab.words["the"]
            phrase = ids[opening + 2 : closing]
            target = answers[q] - vocab.digit
            if q + 1 < len(answer_positions):  # a later question follows this answer
                assert ids[position + 1] == answers[q]
            if layout.get("text_regions"):
                # the candidates are words: "region K SIZE COLOUR CATEGORY ,"
                starts = [i for i in range(position) if ids[i] == vocab.words["region"]][:n]
                labels = [(ids[i + 4] - vocab.category, ids[i + 3] - vocab.colour, None) for i in starts]
            else:
                labels = embedded
            matching = [k for k, (category, colour, _) in enumerate(labels)
                        if vocab.category + category in phrase
                        and (len(phrase) == 1 or vocab.colour + colour in phrase)]
            assert matching == [target]


def test_size_phrases_single_out_their_target_and_use_every_form():
    oracle = _oracle()
    vocab, rng = oracle.Vocabulary(), random.Random(3)
    forms = set()
    for _ in range(300):
        prompt = oracle.make_prompt(rng, vocab, _args(size_phrases=True))
        ids, position = prompt.ids, prompt.answer_positions[0]
        opening, closing = [i for i in range(position) if ids[i] == vocab.words["'"]][-2:]
        phrase = ids[opening + 2 : closing]
        target = prompt.answers[0] - vocab.digit
        words = [("category", vocab.category), ("colour", vocab.colour), ("size", vocab.size)]
        named = {name: w - base for w in phrase for name, base in words if base <= w < base + 100
                 and (name != "category" or w < vocab.colour) and (name != "colour" or w < vocab.size)
                 and (name != "size" or w < vocab.digit)}
        forms.add(tuple(sorted(named)))
        fits = [k for k, labels in enumerate(prompt.region_labels)
                if all(labels[("category", "colour", "size").index(name)] == value for name, value in named.items())]
        assert fits == [target]
    assert forms == {("category",), ("category", "colour"), ("category", "size")}


def test_verify_answers_check_the_candidates_in_order_up_to_the_target():
    oracle = _oracle()
    vocab, rng = oracle.Vocabulary(), random.Random(1)
    yes, no = vocab.words["yes"], vocab.words["no"]
    for _ in range(100):
        prompt = oracle.make_prompt(rng, vocab, _args(verify=True))
        target = prompt.answers[-1] - vocab.digit
        # one yes/no per candidate up to the target, then the target's digit
        assert prompt.answers[:-1] == [no] * target + [yes]
        for k, position in enumerate(prompt.answer_positions[:-1]):
            assert prompt.ids[position - 1 : position + 1] == [vocab.words["region"], vocab.digit + k]
        assert prompt.ids[prompt.answer_positions[-1]] == vocab.words["["]


def test_described_checks_say_each_candidate_before_its_yes_or_no():
    oracle = _oracle()
    vocab, rng = oracle.Vocabulary(), random.Random(2)
    yes, no = vocab.words["yes"], vocab.words["no"]
    for _ in range(100):
        prompt = oracle.make_prompt(rng, vocab, _args(verify=True, describe=True))
        target = prompt.answers[-1] - vocab.digit
        checks = [prompt.answers[4 * k : 4 * k + 4] for k in range(target + 1)]
        assert len(prompt.answers) == 4 * (target + 1) + 1
        for k, (size, colour, category, verdict) in enumerate(checks):
            assert (category - vocab.category, colour - vocab.colour, size - vocab.size) == prompt.region_labels[k]
            assert verdict == (yes if k == target else no)
        # each answer but the final digit is written into the prompt right after the position that predicts it
        for a, position in zip(prompt.answers[:-1], prompt.answer_positions[:-1]):
            assert prompt.ids[position + 1] == a
        assert prompt.answer_positions[-1] == len(prompt.ids) - 1


@pytest.mark.parametrize("flags", [
    [], ["--tied", "--phrase-first"], ["--text-regions", "--queries", "2"],
    ["--attention-supervision", "0.5", "--supervised-layer", "0", "--readout-fraction", "0.5"],
    ["--two-candidate-steps", "1", "--number-as-text"], ["--verify", "--symmetric-qk"],
    ["--verify", "--describe", "--size-phrases"]])
def test_every_variant_trains_and_reports(flags, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["rec_oracle.py", "--steps", "2", "--eval-every", "2", "--width", "32",
                                      "--heads", "2", "--layers", "1", "--max-candidates", "4", *flags])
    _oracle().main()
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [step for step, _ in report["curve"]] == [2] and 0 <= report["curve"][0][1] <= 1


@pytest.mark.parametrize("flags", [["--text-regions", "--attention-supervision", "1"],
                                   ["--verify", "--queries", "2"], ["--verify", "--attention-supervision", "1"],
                                   ["--describe"]])
def test_contradictory_flags_are_refused(flags, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["rec_oracle.py", *flags])
    with pytest.raises(SystemExit):
        _oracle().main()
