"""Metric functions against values computed by hand (formulas in the comments)."""

from __future__ import annotations

import math

import pytest

from ofa_jax import metrics
from ofa_jax.metrics import (caption, classification, detection, grounding,
                             sudoku, text, vqa)

SOLVED = "1 : 2 : 3 : 4 | 3 : 4 : 1 : 2 | 2 : 1 : 4 : 3 | 4 : 3 : 2 : 1"


def test_registry_resolves_ofasys_names():
  assert metrics.get_metric("cider") is caption.cider
  assert metrics.get_metric("iou_acc") is grounding.iou_accuracy
  assert metrics.get_metric("solved_acc") is sudoku.solved_rate
  for name in metrics.metric_names():
    assert callable(metrics.get_metric(name))
  with pytest.raises(KeyError, match="unknown metric 'cidr'"):
    metrics.get_metric("cidr")


@pytest.mark.parametrize("fn", [
    classification.accuracy, text.exact_match, text.wer, text.rouge_l,
    text.bleu, caption.cider, vqa.vqa_score, grounding.iou_accuracy,
    detection.detection_prf, sudoku.solved_rate])
def test_length_mismatch_and_empty_input_are_errors(fn):
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    fn(["a", "b"], ["a"])
  with pytest.raises(ValueError, match="no examples"):
    fn([], [])


@pytest.mark.parametrize("fn,name", [
    (text.exact_match, "exact_match"), (text.rouge_l, "rouge_l"), (text.bleu, "bleu"),
    (caption.cider, "cider")])
def test_a_target_without_references_is_named(fn, name):
  with pytest.raises(ValueError, match=rf"{name}: target 1 has no reference"):
    fn(["a cat", []], ["a cat", "a dog"])


def test_accuracy_and_baselines():
  result = classification.accuracy(["a", "b", "c", " d "], ["a", "x", "c", "d"])
  assert result == {"accuracy": 75.0}
  assert classification.chance_baseline(4) == 25.0
  assert classification.majority_baseline(["a", "a", "b", "c"]) == 50.0
  with pytest.raises(ValueError):
    classification.chance_baseline(0)


def test_exact_match_ignores_whitespace_runs_and_takes_any_reference():
  targets = ["select  a from t", ["x", "y z"], "Case"]
  predictions = ["select a from t ", "y   z", "case"]
  assert text.exact_match(targets, predictions) == {
      "exact_match": pytest.approx(200.0 / 3)}


def test_wer_counts_word_errors_over_the_corpus():
  # Sentence 1: "sat" -> "sit" (1 substitution), "the" deleted: 2 errors of 6.
  # Sentence 2: punctuation and case ignored, "f" deleted: 1 error of 2 words.
  targets = ["the cat sat on the mat", "E, f."]
  predictions = ["the cat sit on mat", "e"]
  assert text.wer(targets, predictions) == {"wer": pytest.approx(100 * 3 / 8)}
  with pytest.raises(ValueError, match="target 1"):
    text.wer(["a", "..."], ["a", "b"])


def test_rouge_l_uses_the_best_reference_and_stems():
  # Stemmed: "the cat sat" vs "the cat sat down": LCS 3, P = 3/4, R = 1,
  # F = 2 * 0.75 / 1.75 = 6/7. The second reference is worse, so max keeps 6/7.
  result = text.rouge_l([["the cat sat", "dogs"]], ["the cats sat down"])
  assert result == {"rouge_l": pytest.approx(600 / 7)}


def test_bleu_with_smoothing_and_variable_references():
  # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> exp smoothing gives 1/(2 * 1);
  # equal lengths -> brevity penalty 1. BLEU = (3/4 * 2/3 * 1/2 * 1/2) ** 0.25.
  assert text.bleu(["a b c e"], ["a b c d"]) == {"bleu": pytest.approx(
      100 * (0.75 * 2 / 3 * 0.5 * 0.5) ** 0.25)}
  # The second example matches its second reference exactly.
  result = text.bleu([["w x y z"], ["q r s t", "a b c d"]],
                     ["w x y z", "a b c d"])
  assert result == {"bleu": pytest.approx(100.0)}


def test_cider_matches_the_formula():
  # Two images, disjoint words, so every n-gram has df = 1 and idf = log 2.
  # An exact caption scores 10 * mean_n(cos_n) = 10 * (1 + 1 + 0 + 0) / 4 = 5
  # (no 3- or 4-grams). Case and punctuation are tokenized away.
  assert caption.cider(["a b", "c d"], ["A b.", "c d"]) == {
      "cider": pytest.approx(500.0)}
  # "a" for "a b": cos_1 = log2^2 / (log2 * sqrt(2) log2) = 1/sqrt(2), other
  # orders 0, length penalty exp(-(1 - 2)^2 / (2 * 6^2)).
  first = 10 / 4 / math.sqrt(2) * math.exp(-1 / 72)
  assert caption.cider(["a b", "c d"], ["a", "c d"]) == {
      "cider": pytest.approx(100 * (first + 5) / 2)}
  # Several references per image and an empty prediction.
  many = caption.cider([["a b", "a b"], ["c d"]], ["", "c d"])
  assert many == {"cider": pytest.approx(100 * (0 + 5) / 2)}
  assert caption.constant_caption_baseline(["a b", "c d"], "a b") == (
      pytest.approx(250.0))


def test_vqa_score_partial_credit():
  targets = [
      ["2"] * 2 + ["two"] * 8,  # "2" said by 2 humans: min(2/3, 1)
      ["yes"] * 10,
      {"red": 1.0, "dark red": 0.3},
      "Blue",
  ]
  predictions = [b"2", "no", "dark red", "blue."]  # bytes are decoded
  expected = (2 / 3 + 0 + 0.3 + 1) / 4
  assert vqa.vqa_score(targets, predictions) == {
      "vqa_score": pytest.approx(100 * expected)}
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    vqa.vqa_score([{"a": 2.0}], ["a"])


def test_vqa_baselines():
  targets = [["a"] * 3, ["a"] + ["b"] * 9, "c"]
  # Uniform guess in {a, b, c, d}: (1/4, (1/3 + 1)/4, 1/4) averaged.
  assert vqa.chance_baseline(targets, ["a", "b", "c", "d"]) == pytest.approx(
      100 * (0.25 + (1 / 3 + 1) / 4 + 0.25) / 3)
  # Total credit: a = 1 + 1/3, b = 1, c = 1 -> always "a".
  assert vqa.majority_baseline(targets) == pytest.approx(100 * (4 / 3) / 3)


def test_box_iou_and_grounding_accuracy():
  assert grounding.box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
  assert grounding.box_iou([0, 0, 2, 2], [3, 3, 4, 4]) == 0.0
  assert grounding.box_iou([2, 2, 0, 0], [0, 0, 2, 2]) == 0.0  # inverted
  targets = [[0, 0, 10, 10]] * 3
  predictions = [[0, 0, 10, 5], [5, 5, 15, 15], None]  # IoU 0.5, 1/7, miss
  result = grounding.iou_accuracy(targets, predictions)
  # Percent (0-100), both keys, nothing else.
  assert result == {"iou_acc": pytest.approx(100 / 3),
                    "mean_iou": pytest.approx(100 * (0.5 + 1 / 7) / 3)}
  with pytest.raises(ValueError, match="prediction 1"):
    grounding.iou_accuracy(targets[:2], [[0, 0, 1, 1], [0, 0, 1]])
  with pytest.raises(ValueError, match="target 0"):
    grounding.iou_accuracy([[0, 0, "x", 1]], [[0, 0, 1, 1]])


def test_constant_box_baseline():
  targets = [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]]
  # The mean box [6.7, 6.7, 16.7, 16.7] overlaps none of them by IoU 0.5.
  assert grounding.constant_box_baseline(targets) == 0.0
  assert grounding.constant_box_baseline(targets, [0, 0, 10, 10]) == (
      pytest.approx(200 / 3))


def test_detection_greedy_matching_by_label():
  targets = [
      [([0, 0, 10, 10], "dog"), ([20, 20, 30, 30], "cat")],
      [],
      [{"box": [0, 0, 4, 4], "label": "cup"}],
  ]
  predictions = [
      # A dog hit, a duplicate of the same dog (a false positive), a cat in
      # the wrong place, and a right box with the wrong label.
      [([0, 0, 10, 9], "Dog"), ([0, 0, 10, 10], "dog"), ([50, 50, 60, 60], "cat"),
       ([20, 20, 30, 30], "cow")],
      [([1, 1, 2, 2], "dog")],
      [{"box": [0, 0, 4, 4], "label": "cup"}],
  ]
  # tp = 2 (dog, cup); predictions 6; targets 3.
  p, r = 2 / 6, 2 / 3
  assert detection.detection_prf(targets, predictions) == {
      "precision": pytest.approx(100 * p), "recall": pytest.approx(100 * r),
      "f1": pytest.approx(100 * 2 * p * r / (p + r))}
  assert detection.detection_prf([[]], [[]]) == {
      "precision": 0.0, "recall": 0.0, "f1": 0.0}
  with pytest.raises(ValueError, match="prediction 0, object 0"):
    detection.detection_prf([[]], [[([0, 0, 1, 1],)]])


def test_detection_prefers_the_best_overlap():
  # The first prediction overlaps both dogs (IoU 2/3 with the first, 1 with the
  # second) and must take the second; the next prediction overlaps only the
  # first dog (IoU 2/3 vs 3/7). Taking the first match found would leave it
  # unmatched.
  targets = [[([0, 0, 10, 10], "dog"), ([2, 0, 12, 10], "dog")]]
  predictions = [[([2, 0, 12, 10], "dog"), ([-2, 0, 8, 10], "dog")]]
  assert detection.detection_prf(targets, predictions) == {
      "precision": pytest.approx(100.0), "recall": pytest.approx(100.0),
      "f1": pytest.approx(100.0)}


def test_detection_constant_object_baseline():
  targets = [[([0, 0, 10, 10], "dog")], [([0, 0, 10, 10], "dog"),
                                         ([5, 5, 6, 6], "cat")]]
  # Predicts one dog at [0, 0, 10, 10] per image: tp 2, preds 2, targets 3.
  p, r = 1.0, 2 / 3
  assert detection.constant_object_baseline(targets) == pytest.approx(
      100 * 2 * p * r / (p + r))


def test_sudoku_grid_parsing_and_validity():
  assert sudoku.parse_grid(SOLVED)[1] == [3, 4, 1, 2]
  assert sudoku.parse_grid("1:2:3 | 4:5:6 | 7:8:9") is None  # 3 is no square
  assert sudoku.parse_grid("1:2:3:4|3:4:1:2|2:1:4:3") is None  # 3 rows
  assert sudoku.parse_grid("1:2:3:5|3:4:1:2|2:1:4:3|4:3:2:1") is None
  assert sudoku.parse_grid(" _ : . : 0 : | 1:2:3:4 |1:2:3:4|1:2:3:4")[0] == [
      0, 0, 0, 0]
  assert sudoku.is_solution(sudoku.parse_grid(SOLVED))
  # A Latin square whose top-left box repeats 2: not a sudoku.
  latin = sudoku.parse_grid("1:2:3:4|2:3:4:1|3:4:1:2|4:1:2:3")
  assert not sudoku.is_solution(latin)


def test_sudoku_solved_rate():
  puzzle = "1 : 0 : 0 : 0 | 0 : 0 : 0 : 0 | 0 : 0 : 0 : 0 | 0 : 0 : 0 : 0"
  other = "1 : 2 : 3 : 4 | 4 : 3 : 2 : 1 | 2 : 1 : 4 : 3 | 3 : 4 : 1 : 2"
  breaks_given = "2 : 1 : 4 : 3 | 3 : 4 : 1 : 2 | 1 : 2 : 3 : 4 | 4 : 3 : 2 : 1"
  targets = [
      {"puzzle": puzzle, "solution": SOLVED},  # another valid grid is solved
      {"puzzle": puzzle},                      # a given is changed
      SOLVED,                                  # no puzzle: must equal
      SOLVED,                                  # malformed prediction
  ]
  predictions = [other, breaks_given, other, "1 : 2 | 3 : 4"]
  # Cell accuracy over targets with a solution (examples 0, 2, 3): rows 0 and
  # 2 of `other` equal SOLVED's -> 8 of 16 cells, twice; 0 of 16.
  assert sudoku.solved_rate(targets, predictions) == {
      "solved": 25.0, "cell_accuracy": pytest.approx(100 * 16 / 48)}
  with pytest.raises(ValueError, match="target 0 has a malformed solution"):
    sudoku.solved_rate(["1:2"], [SOLVED])


def test_sudoku_counting_and_chance_baseline():
  empty = "|".join([":".join(["0"] * 4)] * 4)
  assert sudoku.count_solutions(sudoku.parse_grid(empty)) == 288
  one_blank = SOLVED.replace("1", "0", 1)
  assert sudoku.chance_baseline([one_blank]) == pytest.approx(25.0)
  clash = "1 : 1 : 0 : 0 | 0 : 0 : 0 : 0 | 0 : 0 : 0 : 0 | 0 : 0 : 0 : 0"
  assert sudoku.count_solutions(sudoku.parse_grid(clash)) == 0
  assert sudoku.chance_baseline([empty, SOLVED]) == pytest.approx(
      100 * (288 / 4 ** 16 + 1) / 2)
