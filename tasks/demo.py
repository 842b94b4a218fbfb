"""The embedded demo: eleven tasks over the generated world, one instruction each.

Why these tasks: each mirrors a real OFASys task one to one (COCO caption, VQAv2
with a closed answer set, RefCOCO grounding, grounded captioning, ImageNet
classification, image-text matching, detection, sudoku, text infilling,
text-to-image, image infilling), so the
whole path (instruction -> SeqIO -> model -> decoding -> postprocess -> metric)
is exercised on a fresh machine without downloads.

Registration is an explicit call, `register_demo_tasks(...)`; calling it again with
the same arguments is a no-op, with other arguments it raises unless `replace=True`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import seqio

from ofa_jax import plan as plan_lib
from ofa_jax.plan import pipeline as plan_pipeline
from ofa_jax.metrics import caption as caption_metrics
from ofa_jax.metrics import classification as cls_metrics
from ofa_jax.metrics import detection as det_metrics
from ofa_jax.metrics import grounding as grounding_metrics
from ofa_jax.metrics import sudoku as sudoku_metrics
from ofa_jax.metrics import text as text_metrics
from ofa_jax.metrics import vqa as vqa_metrics
from tasks import demo_judge
from tasks import demo_world as world

MIXTURE = "demo_mixture"
PREFIX = "demo_"

# One line per task: (name, instruction, source kind, metric_fns, extra options).
INSTRUCTIONS: tuple[tuple[str, str, str], ...] = (
    ("caption", "[IMAGE:img] what does the image describe? -> [TEXT:cap]",
     "caption"),
    ("vqa", "[IMAGE:img] [TEXT:question] -> [TEXT:question,no_loss] "
     "[TEXT:answer,closed_set]", "vqa"),
    ("grounding", '[IMAGE:img] which region does the text " [TEXT:cap] " '
     "describe? -> [BOX:region]", "grounding"),
    ("grounded_caption", "[IMAGE:img] what does the region describe? region: "
     "[BOX:region] -> [TEXT:cap]", "grounded_caption"),
    ("classify", "[IMAGE:img] what shape is in the image? -> "
     "[TEXT:label,closed_set]", "classify"),
    ("matching", '[IMAGE:img] does the image describe " [TEXT:cap] "? -> '
     'does the image describe " [TEXT:cap,no_loss] "? [TEXT:label,closed_set]',
     "matching"),
    ("detection", "[IMAGE:img] what are the objects in the image? -> "
     "( [BOX:boxes] [TEXT:labels] )*", "detection"),
    ("sudoku", 'solve the sudoku puzzle " [TEXT:puzzle] " -> [TEXT:solution]',
     "sudoku"),
    ("infilling", 'what is the complete text of " [TEXT:sentence,mask_ratio=0.3] '
     '"? -> [TEXT:sentence]', "infilling"),
    # Image generation (OFA's text-to-image and image infilling): the target
    # image becomes VQ codes of the demo's VQGAN (trained by make demo).
    # A picture names everything it shows (demo_world.picture_scene), so a
    # generated one is judged by the picture it is nearest to.
    ("text_to_image", "what is the complete image? caption: [TEXT:cap] -> "
     "[IMAGE:img]", "picture"),
    # The centre quarter masked: the object, in the top-left quadrant, stays
    # in part visible, and the rest of it has to be drawn back.
    ("image_infilling", 'what is the complete image of " '
     '[IMAGE:img,mask_ratio=0.25] "? -> [IMAGE:img]', "picture"),
)
# Tasks whose target is an image (judged by tasks/demo_judge.py).
IMAGE_TARGET_TASKS = ("text_to_image", "image_infilling")

METRICS = {
    "caption": (caption_metrics.cider,),
    "vqa": (vqa_metrics.vqa_score,),
    "grounding": (grounding_metrics.iou_accuracy,),
    "grounded_caption": (caption_metrics.cider,),
    "classify": (cls_metrics.accuracy,),
    "matching": (cls_metrics.accuracy,),
    "detection": (det_metrics.detection_prf,),
    "sudoku": (sudoku_metrics.solved_rate,),
    "infilling": (text_metrics.exact_match,),
    "text_to_image": (demo_judge.picture_metrics,),
    "image_infilling": (demo_judge.picture_metrics,),
}

CLOSED_SETS = {
    "vqa": world.vqa_answers(),
    "classify": world.SHAPES,
    "matching": ("yes", "no"),
}

# Task feature lengths that fit every demo task (longer streams are truncated and
# counted by the plan). Measured maxima: inputs 40 (sudoku; matching 22),
# targets 33 (sudoku; infilling 26, detection 19): padding costs steps.
FEATURE_LENGTHS = {"inputs": 40, "targets": 36, "images": 1, "audio": 0,
                   "video": 0, "motion": 0, "target_image": 32, "target_audio": 0,
                   "target_motion": 0}
# The generated images: 32 px at the demo VQGAN's factor 8, a 4 x 4 grid of
# codes (17 target tokens with </s>).
TARGET_IMAGE_SIZE = 32
VQ_FACTOR = 8

DEFAULT_NUM_EXAMPLES = {"train": 5000, "validation": 200, "test": 200}

_GRID_RE = re.compile(r"[0-9](?:\s*[:|]\s*[0-9]){15}")


def task_names() -> tuple[str, ...]:
  return tuple(PREFIX + name for name, _, _ in INSTRUCTIONS)


def _sudoku_postprocess(plan):
  """Targets carry the puzzle too, so any valid completion counts as solved."""
  base = plan_pipeline.default_postprocess_fn(plan)

  def postprocess(output: Any, example: Optional[Mapping[str, Any]] = None,
                  is_target: bool = False) -> Any:
    text = base(output, example=example, is_target=is_target)
    if not is_target or example is None or "inputs" not in example:
      return text
    source = plan.vocab.decode(list(example["inputs"]))
    match = _GRID_RE.search(source)
    if match is None:
      return text
    return {"puzzle": re.sub(r"\s+", "", match.group(0)), "solution": text}

  return postprocess


def _options(name: str, image_size: int) -> dict[str, Any]:
  options: dict[str, Any] = {"image_size": image_size}
  if name in CLOSED_SETS:
    options["closed_set"] = list(CLOSED_SETS[name])
  if name == "detection":
    options["max_len"] = FEATURE_LENGTHS["targets"] - 1  # tokens before </s>
  if name in IMAGE_TARGET_TASKS:
    # offline_cache: make demo tokenizes their training images once
    # (tools/tokenize_images.py) instead of in every train step.
    options.update(target_image_size=TARGET_IMAGE_SIZE, vq_factor=VQ_FACTOR,
                   offline_cache=True)
  return options


def register_demo_tasks(image_size: int = 64, *, replace: bool = False,
                        num_examples: Optional[Mapping[str, int]] = None,
                        seed: int = 0, canvas: int = 64,
                        rates: Optional[Mapping[str, float]] = None,
                        vocabulary=None) -> tuple[str, ...]:
  """Registers the demo tasks and `demo_mixture`; returns the task names.

  Args:
    image_size: side of the processed images (the model's input resolution).
    replace: re-register over existing demo tasks with different arguments.
    num_examples: examples per split (default `DEFAULT_NUM_EXAMPLES`).
    seed: the world's seed.
    canvas: side of the rendered images (before resizing to image_size).
    rates: mixing rate per task short name (default 1.0 each).
    vocabulary: an OFAVocabulary (default: the bundled one).
  """
  counts = dict(num_examples or DEFAULT_NUM_EXAMPLES)
  signature = (image_size, tuple(sorted(counts.items())), seed, canvas,
               tuple(sorted((rates or {}).items())), repr(vocabulary))
  names = task_names()
  existing = [n for n in names if n in seqio.TaskRegistry.names()]
  if existing and not replace:
    same = all(getattr(seqio.TaskRegistry.get(n), "plan", None) is not None
               and seqio.TaskRegistry.get(n).plan.options.get("demo_signature")
               == signature for n in names if n in existing)
    if same and len(existing) == len(names) and MIXTURE in seqio.MixtureRegistry.names():
      return names
    raise ValueError(
        f"demo tasks {existing} are already registered with other arguments; "
        "pass replace=True to replace them")
  postprocess = {"sudoku": _sudoku_postprocess}
  for name, instruction, kind in INSTRUCTIONS:
    source = world.function_source(kind, counts, seed=seed, canvas=canvas)
    plan_lib.register_task(
        PREFIX + name, instruction, source, metric_fns=METRICS[name],
        make_postprocess_fn=postprocess.get(name),
        replace=True, vocabulary=vocabulary, demo_signature=signature,
        # Infilling masks its input on every split: OFASys masks in training
        # only, which would make evaluation a copy task.
        train_splits=(world.SPLITS if name in ("infilling", "image_infilling")
                      else ("train",)),
        **_options(name, image_size))
  rates = dict(rates or {})
  plan_lib.register_mixture(
      MIXTURE, [(PREFIX + name, rates.get(name, 1.0)) for name, _, _ in INSTRUCTIONS],
      replace=True)
  return names


def chance_baselines(split: str = "validation", n: int = 200, seed: int = 0,
                     canvas: int = 64,
                     train_examples: int = DEFAULT_NUM_EXAMPLES["train"]
                     ) -> dict[str, dict[str, Any]]:
  """Each task's metric for the best predictor that does not see the image.

  Fitted on the training split and scored with the task's metric on the first
  `n` examples of `split`: VQA answers the commonest training answer to the
  same question (a uniform guess would flatter the model), and so on for every
  task: `tasks/demo_baselines.py` says what each baseline sees.
  """
  from tasks import demo_baselines  # pylint: disable=g-import-not-at-top
  return demo_baselines.blind_baselines(n, split=split, seed=seed, canvas=canvas,
                                        train_examples=train_examples)


__all__: Sequence[str] = ("FEATURE_LENGTHS", "MIXTURE", "chance_baselines",
                          "register_demo_tasks", "task_names")
