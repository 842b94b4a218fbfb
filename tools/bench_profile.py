"""Where a profiled step's time goes: XLA op time totals from a `jax.profiler` trace.

Why parse the trace ourselves: the profile viewer (xprof / the tensorboard
plugin) is not a dependency, but the trace itself is an `XSpace` protobuf whose
schema ships with TensorFlow. On CPU every executed XLA thunk (a fusion, a
convolution, a oneDNN / YNNPACK matmul, a copy) is an event on one of the XLA
thread-pool lines; summing their durations per op name gives a flat profile.
Times of events on different threads add up (CPU time, not wall time).
"""

from __future__ import annotations

import collections
import glob
import os
import re
from typing import Any

_SKIP = ("ThreadpoolListener", "ThunkExecutor", "end: ")


def _category(name: str) -> str:
  """`fusion.123` -> `fusion`, `convolution.4` -> `convolution`."""
  return re.sub(r"[._]\d+$", "", name)


def summarize(profile_dir: str, top: int = 15) -> dict[str, Any]:
  """Per-op-category CPU milliseconds of the newest trace under profile_dir."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"No *.xplane.pb trace under {profile_dir!r}")
  space = xplane_pb2.XSpace()
  with open(paths[-1], "rb") as f:
    space.ParseFromString(f.read())
  by_cat: collections.Counter = collections.Counter()
  by_name: collections.Counter = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name.startswith(_SKIP):
          continue
        ms = event.duration_ps / 1e9
        by_cat[_category(name)] += ms
        by_name[name] += ms
  total = sum(by_cat.values())

  def rows(counter):
    return [{"name": k, "cpu_ms": round(v, 3),
             "share": round(v / total, 4) if total else 0.0}
            for k, v in counter.most_common(top)]

  return {"trace": paths[-1], "total_cpu_ms": round(total, 3),
          "by_category": rows(by_cat), "top_ops": rows(by_name)}
