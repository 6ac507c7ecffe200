"""Phrase attention supervision (train.phrase_pointer_weight): which rows and positions it supervises."""

from __future__ import annotations

import torch

from regiongpt.training.phrase_pointer import label_word_positions, label_word_sequences, phrase_pointers

DIGITS = {30, 31}  # "1", "2"


def test_label_words_are_every_label_name_longest_first_without_repeats():
    words = label_word_sequences([[10], [11, 12]], {"category": [[10], [11, 12]], "colour": [[20], [21]]})
    assert words == [(11, 12), (10,), (20,), (21,)]
    assert label_word_sequences(None, None) == []


def test_label_word_positions_prefer_the_longer_name_and_stay_in_the_span():
    words = [(11, 12), (11,), (20,)]
    ids = [5, 11, 12, 6, 20, 11, 20]
    assert label_word_positions(ids, 0, 7, words) == [1, 2, 4, 5, 6]
    assert label_word_positions(ids, 0, 2, words) == [1]  # "11 12" does not fit: the shorter name does
    assert label_word_positions(ids, 3, 4, words) == []


def test_phrase_pointers_point_the_answer_at_its_questions_label_words():
    # "<image> rec: 20 10 ? -> Region [ 2 ] </s> | yes/no: is there 10 ? -> Yes </s> | classify: 10 ? -> 10 </s>
    #  | yes/no without label words -> No </s>"
    ids = [1, 2, 20, 10, 3, 40, 41, 31, 42, 9, 4, 10, 3, 50, 9, 5, 10, 3, 10, 9, 6, 3, 51, 9]
    ans = [-1, -1, -1, -1, -1, 0, 0, 0, 0, 0, -1, -1, -1, 1, 1, -1, -1, -1, 2, 2, -1, -1, 3, 3]
    tasks = ["rec", "existence", "classify", "existence"]
    words = label_word_sequences([[10]], {"colour": [[20]]})
    pointers = phrase_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, words, DIGITS)
    rec, existence = pointers
    assert len(pointers) == 2  # classification is not a lookup; a question without label words is skipped
    # the REC query writes the digit "2" (position 7): it should look at "20 10"
    assert (rec.query, rec.token, rec.targets) == (6, 31, (2, 3))
    assert rec.others == (0, 1, 4, 5, 6) and rec.choices == ((2, 3), (0, 1, 4, 5, 6)) and rec.answer == 0
    # the yes/no answer has no digit: its first token's query, and only its own question's words
    assert (existence.query, existence.token, existence.targets) == (12, 50, (11,))
    only_existence = phrase_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, words, DIGITS,
                                     tasks=["existence"])
    assert [p.query for p in only_existence] == [12]


def test_phrase_pointers_with_target_words_point_only_at_those_and_skip_questions_without_them():
    # rec "20 10 ?" -> Region [2]; rec "10 ?" -> Region [1]; yes/no "20 10 ?" -> Yes
    ids = [1, 2, 20, 10, 3, 40, 41, 31, 42, 9, 4, 10, 3, 40, 41, 30, 42, 9, 5, 20, 10, 3, 50, 9]
    ans = [-1, -1, -1, -1, -1, 0, 0, 0, 0, 0, -1, -1, -1, 1, 1, 1, 1, 1, -1, -1, -1, -1, 2, 2]
    tasks = ["rec", "rec", "existence"]
    words = label_word_sequences([[10]], {"colour": [[20]]})
    pointers = phrase_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, words, DIGITS, tasks=("rec",),
                               target_words={(20,)})
    assert len(pointers) == 1  # the second REC phrase names no colour; yes/no is not asked for
    (rec,) = pointers
    assert (rec.query, rec.token, rec.targets) == (6, 31, (2,))
    assert 3 in rec.others  # the category word competes with the colour word
    # the split into names still follows every label word: a target word inside a longer name is not one
    longer = label_word_sequences([[20, 10]], {"colour": [[20]]})
    assert phrase_pointers(torch.tensor([ids]), torch.tensor([ans]), tasks, longer, DIGITS, tasks=("rec",),
                           target_words={(20,)}) == []
