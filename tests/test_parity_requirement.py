"""The rule of tests/conftest.py: a missing parity extra fails, never skips quietly.

Each case runs pytest in process on a one-file suite that uses this
repository's conftest, with the requirement variable set as the case says.
"""

from __future__ import annotations

import pathlib

import pytest

pytest_plugins = ["pytester"]

CONFTEST = pathlib.Path(__file__).with_name("conftest.py").read_text()

SUITE = '''
import pytest

@pytest.mark.parity
def test_marked():
  pytest.skip("OFA reference unavailable (No module named 'modelscope')")

def test_needs_torch():
  pytest.skip("could not import 'torch': No module named 'torch'")

def test_other_optional():
  pytest.skip("could not import 'regex'")
'''


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
  pytester.makeconftest(CONFTEST)
  pytester.makeini("[pytest]\nmarkers =\n    parity: needs the parity extra\n")
  pytester.makepyfile(test_suite=SUITE)
  return pytester


def test_unset_fails_marked_tests_only(suite, monkeypatch):
  monkeypatch.delenv("OFA_JAX_REQUIRE_PARITY", raising=False)
  result = suite.runpytest("-p", "no:cacheprovider")
  result.assert_outcomes(failed=1, skipped=2)
  result.stdout.fnmatch_lines(["*test_marked needs the parity extra*"])


def test_unset_with_parity_deselected_passes(suite, monkeypatch):
  monkeypatch.delenv("OFA_JAX_REQUIRE_PARITY", raising=False)
  result = suite.runpytest("-p", "no:cacheprovider", "-m", "not parity")
  result.assert_outcomes(skipped=2, deselected=1)
  assert result.ret == 0


def test_required_fails_every_skip_for_the_extra(suite, monkeypatch):
  monkeypatch.setenv("OFA_JAX_REQUIRE_PARITY", "1")
  result = suite.runpytest("-p", "no:cacheprovider")
  result.assert_outcomes(failed=2, skipped=1)  # regex is not the extra
  # ...and deselecting does not get around it.
  result = suite.runpytest("-p", "no:cacheprovider", "-m", "not parity")
  result.assert_outcomes(failed=1, skipped=1, deselected=1)


def test_required_refuses_to_start_without_the_extra(suite, monkeypatch):
  monkeypatch.setenv("OFA_JAX_REQUIRE_PARITY", "1")
  suite.makeconftest(CONFTEST + '\nPARITY_MODULES = ("torch", "no_such_parity_module")\n')
  result = suite.runpytest("-p", "no:cacheprovider")
  assert result.ret == pytest.ExitCode.USAGE_ERROR
  result.stderr.fnmatch_lines(["*missing: no_such_parity_module*"])


def test_opt_out_skips(suite, monkeypatch):
  monkeypatch.setenv("OFA_JAX_REQUIRE_PARITY", "0")
  result = suite.runpytest("-p", "no:cacheprovider")
  result.assert_outcomes(skipped=3)
  monkeypatch.setenv("OFA_JAX_REQUIRE_PARITY", "yes")
  assert suite.runpytest("-p", "no:cacheprovider").ret == (
      pytest.ExitCode.USAGE_ERROR)
