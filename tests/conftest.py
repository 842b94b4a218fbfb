"""Test-wide setup: CPU only, a fake 8-device mesh, quick XLA compiles, TensorFlow
kept off accelerators.

Also the rule that keeps CI honest about parity with OFA's PyTorch network: a
test that needs the parity extra (torch, transformers, modelscope, fairseq)
never turns a missing extra into a silent skip.

* ``OFA_JAX_REQUIRE_PARITY=1`` (set by ``make test`` and ``.ci/run``): pytest
  refuses to start when a module of the extra cannot be found, and any test
  skipped for want of one of those modules is reported as failed.
* unset (plain ``pytest``): tests marked ``parity`` fail, not skip, when the
  extra is missing. On a machine without it, ask explicitly:
  ``pytest -m "not parity"`` (those tests are not run) or
  ``OFA_JAX_REQUIRE_PARITY=0`` (they skip, as any other optional test does).
"""

from __future__ import annotations

import importlib.util
import os
import re

# Backend optimizations off: a test compiles each program once and runs it a
# few times, so XLA:CPU's LLVM passes cost more than they save (on 2 cores:
# tests/test_trainer.py 151 -> 81 s, tests/test_demo_main.py 489 -> 317 s).
# Subprocesses inherit the flags; a test that sets its own device count keeps
# the rest (test_multihost.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

from ofa_jax import tf_setup  # noqa: E402

tf_setup.hide_accelerators_from_tensorflow()

REQUIRE_PARITY_ENV = "OFA_JAX_REQUIRE_PARITY"
# The top-level modules of setup.cfg's `parity` extra.
PARITY_MODULES = ("torch", "transformers", "modelscope", "fairseq", "taming")
_PARITY_MODULE_RE = re.compile(
    r"\b(" + "|".join(re.escape(m) for m in PARITY_MODULES) + r")\b")
_HOW_TO = ("install it with `pip install -e '.[parity]'` (make test does), or, "
           "on a machine without it, run `pytest -m \"not parity\"` or set "
           f"{REQUIRE_PARITY_ENV}=0")


def _requirement() -> str:
  """'all' (=1), 'marked' (unset: parity-marked tests only) or 'none' (=0)."""
  value = os.environ.get(REQUIRE_PARITY_ENV, "").strip()
  if value == "1":
    return "all"
  if value == "0":
    return "none"
  if value:
    raise pytest.UsageError(f"{REQUIRE_PARITY_ENV}={value!r}: expected 1 "
                            "(the parity extra is required) or 0 (tests that "
                            "need it skip); unset fails parity-marked tests only")
  return "marked"


def missing_parity_modules() -> list[str]:
  """The modules of the parity extra that cannot be found (no import: cheap)."""
  missing = []
  for module in PARITY_MODULES:
    try:
      found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
      found = False
    if not found:
      missing.append(module)
  return missing


def pytest_configure(config: pytest.Config) -> None:
  del config
  if _requirement() == "all" and (missing := missing_parity_modules()):
    raise pytest.UsageError(
        f"{REQUIRE_PARITY_ENV}=1 but the parity extra is not installed "
        f"(missing: {', '.join(missing)}); {_HOW_TO}")


def _skip_reason(report: pytest.TestReport) -> str:
  longrepr = report.longrepr
  if isinstance(longrepr, tuple) and len(longrepr) == 3:
    return str(longrepr[2])
  return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
  """Turns a skip caused by a missing parity extra into a failure."""
  del call
  outcome = yield
  report = outcome.get_result()
  if not report.skipped or hasattr(report, "wasxfail"):
    return
  requirement = _requirement()
  if requirement == "none":
    return
  reason = _skip_reason(report)
  marked = item.get_closest_marker("parity") is not None
  if marked or (requirement == "all" and _PARITY_MODULE_RE.search(reason)):
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid} needs the parity extra and would have "
                       f"been skipped ({reason}); {_HOW_TO}")
