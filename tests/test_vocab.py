"""OFAVocabulary: OFA's id layout, Python == TF == tf.data, and the GPT-2 BPE loader."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import random
import sys

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import seqio
import tensorflow as tf

from ofa_jax import bpe
from ofa_jax import vocab as vocab_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def v():
  return vocab_lib.default_vocabulary()


def _plain_text():
  """Text without literal special tokens (those are tested separately)."""
  alphabet = st.characters(categories=("L", "N", "P", "S"), exclude_characters="<>\u2581")
  return st.lists(st.one_of(st.text(alphabet, min_size=1, max_size=8), st.just(" ")),
                  max_size=8).map("".join)


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------
def test_layout_of_default_vocabulary(v):
  n_text = v.text_tokenizer.size
  assert (v.bos_id, v.pad_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
  assert v.mask_id == n_text
  assert v.code_offset == v.text_size == n_text + 1
  assert v.bin_offset == v.code_offset + 8192
  assert v.vocab_size == v.bin_offset + 1000 == n_text + 1 + 8192 + 1000
  assert 4000 <= n_text <= 8000


def test_layout_is_configurable():
  small = vocab_lib.default_vocabulary(num_codes=16, num_bins=10)
  assert small.bin_offset == small.code_offset + 16
  assert small.vocab_size == small.bin_offset + 10
  assert small.code_id(15) == small.bin_offset - 1
  with pytest.raises(ValueError, match="code index 16"):
    small.code_id(16)
  with pytest.raises(ValueError, match="bin index -1"):
    small.bin_id(-1)


def test_code_and_bin_ids_accept_ints_numpy_and_tf(v):
  assert v.code_id(0) == v.code_offset and v.bin_id(999) == v.vocab_size - 1
  np.testing.assert_array_equal(v.bin_id(np.array([0, 5])), [v.bin_offset, v.bin_offset + 5])
  t = v.bin_id(tf.constant([1, 2], tf.int64))
  assert t.dtype == tf.int32
  np.testing.assert_array_equal(t.numpy(), [v.bin_offset + 1, v.bin_offset + 2])
  ids = np.array([v.mask_id, v.code_offset, v.bin_offset - 1, v.bin_offset, v.vocab_size - 1])
  np.testing.assert_array_equal(v.is_code(ids), [False, True, True, False, False])
  np.testing.assert_array_equal(v.is_bin(ids), [False, False, False, True, True])
  np.testing.assert_array_equal(v.is_bin(tf.constant(ids)).numpy(), v.is_bin(ids))


def test_phones_are_single_tokens(v):
  assert v.has_phone_tokens
  ids = [v.phone_id(p) for p in vocab_lib.ARPABET_PHONES]
  assert len(set(ids)) == 39 and all(4 <= i < v.mask_id for i in ids)
  assert v.phone_id("AH0") == v.phone_id("AH")
  assert v.encode("<ph_AA>") == [v.phone_id("AA")]


def test_equality_and_hash(v):
  assert v == vocab_lib.default_vocabulary() and hash(v) == hash(vocab_lib.default_vocabulary())
  assert v != vocab_lib.default_vocabulary(num_bins=10)


# ---------------------------------------------------------------------------
# Python encode / decode
# ---------------------------------------------------------------------------
@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(text=_plain_text())
def test_text_round_trips_and_never_unk(v, text):
  ids = v.encode(text)
  assert v.unk_id not in ids
  assert all(4 <= i < v.mask_id for i in ids)
  assert v.decode(ids) == " ".join(text.split())


def test_literal_special_tokens(v):
  ids = v.encode("a red circle <bin_3><bin_999> and <mask> then <code_7> <bin_1000>")
  assert v.bin_id(3) in ids and v.bin_id(999) in ids and v.code_id(7) in ids
  assert v.mask_id in ids
  assert all(not v.is_bin(i) for i in ids[ids.index(v.code_id(7)) + 1:])  # 1000: text
  text = v.decode(ids)
  assert text == "a red circle <bin_3> <bin_999> and <mask> then <code_7> <bin_1000>"
  assert v.encode(text) == ids


def test_decode_stops_at_eos_and_skips_specials(v):
  word = v.encode("square")
  ids = [v.bos_id] + word + [v.pad_id, v.bin_id(4), v.eos_id] + v.encode("circle")
  assert v.decode(ids) == "square <bin_4>"
  assert v.decode([v.vocab_size + 5]) == "<unk>"  # out of range -> unk


# ---------------------------------------------------------------------------
# TF: eager and inside tf.data
# ---------------------------------------------------------------------------
SAMPLES = ["A small red circle in the upper left corner.", "",
           "1:2|3:4 | 4:3|2:1", "héllo 日本 <bin_12> x<mask>y <code_8191>",
           "what does the image describe?", "  spaced   out  "]


def test_encode_tf_matches_python_eager_and_in_tf_data(v):
  expected = [v.encode(s) for s in SAMPLES]
  for s, e in zip(SAMPLES, expected):
    got = v.encode_tf(tf.constant(s))
    assert got.dtype == tf.int32 and got.shape.rank == 1
    assert got.numpy().tolist() == e
  batch = v.encode_tf(tf.constant(SAMPLES))
  assert isinstance(batch, tf.RaggedTensor)
  assert batch.to_list() == expected
  ds = tf.data.Dataset.from_tensor_slices(SAMPLES).map(v.encode_tf)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == expected


def test_decode_tf_matches_python(v):
  rows = [v.encode(s) + [v.eos_id, 7, 8] for s in SAMPLES[:4]]
  width = max(map(len, rows))
  padded = [r + [v.pad_id] * (width - len(r)) for r in rows]
  got = [s.decode("utf-8") for s in v.decode_tf(tf.constant(padded)).numpy()]
  assert got == [v.decode(r) for r in rows]
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(padded)).map(v.decode_tf)
  assert [s.decode("utf-8") for s in ds.as_numpy_iterator()] == got


def test_seqio_tokenize_preprocessor_uses_the_vocabulary(v):
  feats = {"targets": seqio.Feature(vocabulary=v, add_eos=True)}
  ds = tf.data.Dataset.from_tensors({"targets": tf.constant(SAMPLES[0])})
  ds = seqio.preprocessors.tokenize_and_append_eos(ds, feats)
  (ex,) = list(ds.as_numpy_iterator())
  assert ex["targets"].tolist() == v.encode(SAMPLES[0]) + [v.eos_id]


def test_bundled_model_is_what_the_tool_builds(tmp_path):
  spec = importlib.util.spec_from_file_location("build_sp", ROOT / "tools/build_sentencepiece.py")
  tool = importlib.util.module_from_spec(spec)
  sys.modules["build_sp"] = tool
  spec.loader.exec_module(tool)
  out = tmp_path / "sp.model"
  tool.build(out, vocab_size=4096)
  assert out.read_bytes() == pathlib.Path(vocab_lib.default_spm_path()).read_bytes()


# ---------------------------------------------------------------------------
# GPT-2 BPE (synthetic files of OFA's sizes)
# ---------------------------------------------------------------------------
MERGES = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("h", "e"), ("Ġ", "he"), ("l", "l")]


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
  """encoder.json with 50257 tokens, dict.txt with 50257 ids (shuffled) + 3 madeupwords."""
  d = tmp_path_factory.mktemp("bpe")
  byte_chars = [bpe.bytes_to_unicode()[b] for b in range(256)]
  tokens = byte_chars + [a + b for a, b in MERGES]
  tokens += [f"filler{i}" for i in range(50257 - len(tokens))]
  encoder = {t: i for i, t in enumerate(tokens)}
  (d / "encoder.json").write_text(json.dumps(encoder))
  (d / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
  order = list(range(50257))
  random.Random(0).shuffle(order)
  lines = [f"{i} {1000 - k % 1000}" for k, i in enumerate(order)]
  lines += [f"madeupword000{k} 0" for k in range(3)]
  (d / "dict.txt").write_text("\n".join(lines) + "\n")
  fairseq_of = {gpt2: 4 + k for k, gpt2 in enumerate(order)}
  return d, encoder, fairseq_of


def test_ofa_bpe_layout_is_59457(bpe_files):
  d, _, _ = bpe_files
  ofa = vocab_lib.ofa_bpe_vocabulary(str(d / "encoder.json"), str(d / "vocab.bpe"),
                                     str(d / "dict.txt"))
  assert ofa.vocab_size == 59457
  assert (ofa.mask_id, ofa.code_offset, ofa.bin_offset) == (50264, 50265, 58457)
  assert ofa.code_id(8191) == 58456 and ofa.bin_id(999) == 59456
  assert not ofa.has_phone_tokens


def test_bpe_merges_and_dictionary_mapping(bpe_files):
  d, encoder, fairseq_of = bpe_files
  tok = bpe.GPT2BPETokenizer.from_files(str(d / "encoder.json"), str(d / "vocab.bpe"),
                                        str(d / "dict.txt"))
  # " the hello": Ġthe by three merges; hello -> Ġ h e l l o -> Ġhe ll o.
  want = ["Ġthe", "Ġhe", "ll", "o"]
  assert tok.gpt2_ids("the hello") == [encoder[t] for t in want]
  assert tok.encode("the hello") == [fairseq_of[encoder[t]] for t in want]
  ofa = vocab_lib.OFAVocabulary(tok)
  ids = ofa.encode("the hello <bin_5>")
  assert ids[-1] == ofa.bin_id(5)
  assert ofa.decode(ids) == "the hello <bin_5>"
  assert ofa.encode_tf(tf.constant("the hello <bin_5>")).numpy().tolist() == ids
  ds = tf.data.Dataset.from_tensors(tf.constant(["the hello", "x"])).map(ofa.encode_tf)
  (got,) = list(ds.as_numpy_iterator())
  assert [r.tolist() for r in got] == [ofa.encode("the hello"), ofa.encode("x")]
  assert ofa.decode_tf(tf.constant(ids)).numpy().decode() == "the hello <bin_5>"


def test_bpe_files_errors_name_file_and_line(tmp_path, bpe_files):
  d, _, _ = bpe_files
  bad = tmp_path / "vocab.bpe"
  bad.write_text("#version: 0.2\nĠ t\nbroken\n")
  with pytest.raises(ValueError, match=r"vocab.bpe:3"):
    bpe.GPT2BPETokenizer.from_files(str(d / "encoder.json"), str(bad), str(d / "dict.txt"))


@pytest.mark.parametrize("text", ["Hello world", "it's 2024, isn't it?  Yes!!\n\nok ",
                                  "a  b\t\tc", " 's x", "日本語 テキスト", "x\u00a0y"])
def test_pretokenize_pieces_concatenate(text):
  assert "".join(bpe.pretokenize(text)) == text


_GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+"""
                 r"""|\s+(?!\S)|\s+""")


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(text=st.lists(st.sampled_from(list("ab1 2'!?.\t\nsé日") + ["'s", "'ll"]),
                                max_size=20).map("".join))
def test_pretokenize_matches_gpt2_regex(text):
  regex = pytest.importorskip("regex")
  assert bpe.pretokenize(text) == regex.findall(_GPT2_PATTERN, text)


def test_vocabularies_pickle(v, bpe_files):
  import pickle  # pylint: disable=g-import-not-at-top

  d, _, _ = bpe_files
  ofa = vocab_lib.ofa_bpe_vocabulary(str(d / "encoder.json"), str(d / "vocab.bpe"),
                                     str(d / "dict.txt"))
  for vocab in (v, ofa):
    v.encode_tf(tf.constant("warm the caches <bin_1>"))
    copy = pickle.loads(pickle.dumps(vocab))
    assert copy == vocab
    assert copy.encode("the hello <bin_1>") == vocab.encode("the hello <bin_1>")


def _train_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
  """A tiny BPE trainer (most frequent pair first), for the parity test below."""
  counts: dict[tuple[str, ...], int] = {}
  for w in words:
    counts[tuple(w)] = counts.get(tuple(w), 0) + 1
  merges = []
  for _ in range(num_merges):
    pairs: dict[tuple[str, str], int] = {}
    for w, c in counts.items():
      for pair in zip(w, w[1:]):
        pairs[pair] = pairs.get(pair, 0) + c
    if not pairs:
      break
    best = max(pairs, key=lambda p: (pairs[p], p))
    merges.append(best)
    merged: dict[tuple[str, ...], int] = {}
    for w, c in counts.items():
      out, i = [], 0
      while i < len(w):
        if i + 1 < len(w) and (w[i], w[i + 1]) == best:
          out.append(w[i] + w[i + 1])
          i += 2
        else:
          out.append(w[i])
          i += 1
      merged[tuple(out)] = merged.get(tuple(out), 0) + c
    counts = merged
  return merges


@pytest.mark.slow
@pytest.mark.parity
def test_bpe_matches_transformers_gpt2_tokenizer(tmp_path):
  transformers = pytest.importorskip("transformers")
  spec = importlib.util.spec_from_file_location("build_sp2", ROOT / "tools/build_sentencepiece.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  lines = tool.corpus_lines(num_sentences=500)
  byte_map = bpe.bytes_to_unicode()
  words = ["".join(byte_map[b] for b in w.encode("utf-8"))
           for line in lines[:3000] for w in bpe.pretokenize(" " + line)]
  merges = _train_merges(words, 300)
  tokens = [byte_map[b] for b in range(256)] + [a + b for a, b in merges]
  encoder = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
  (tmp_path / "encoder.json").write_text(json.dumps(encoder))
  (tmp_path / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  (tmp_path / "dict.txt").write_text("".join(f"{i} 1\n" for i in range(len(encoder))))
  ours = bpe.GPT2BPETokenizer.from_files(str(tmp_path / "encoder.json"),
                                         str(tmp_path / "vocab.bpe"),
                                         str(tmp_path / "dict.txt"), add_prefix_space=False)
  ref = transformers.GPT2Tokenizer(str(tmp_path / "encoder.json"), str(tmp_path / "vocab.bpe"))
  texts = lines[-200:] + ["It's a red circle; isn't it?  Yes!!\n\n 42 circles...",
                          "héllo wörld 日本語 – “quotes” 3.14", "  leading and trailing  "]
  for text in texts:
    assert ours.gpt2_ids(text) == ref.encode(text), text
