"""Every remat policy computes the same loss and gradients as none.

A policy only decides what the backward pass keeps and what it recomputes
(`ofa_jax/model/remat.py`), so the numbers must not move; a wrong
`static_argnums` or a policy that drops a needed residual would.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model import config as config_lib
from ofa_jax.model import remat
from ofa_jax.model import testing
from ofa_jax.model.transformer import OFATransformer


@pytest.fixture(scope="module")
def setup():
  cfg = testing.small_config(encoder_layers=1, decoder_layers=1)
  batch = testing.random_batch(cfg, num_images=0)
  variables = testing.random_variables(cfg, batch)
  return cfg, batch, variables


def _loss_and_grads(cfg, batch, variables):
  model = OFATransformer(cfg)
  targets = jnp.asarray(np.roll(batch["decoder_input_tokens"], -1, axis=1))

  def loss(params):
    logits = model.apply({**variables, "params": params}, batch, train=False)
    lp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(lp, targets[..., None], axis=-1))

  return jax.jit(jax.value_and_grad(loss))(variables["params"])


@pytest.fixture(scope="module")
def reference(setup):
  return _loss_and_grads(*setup)


@pytest.mark.slow  # ~50 s a policy on the loaded 2-core CI machine
@pytest.mark.parametrize("policy", ["full", "dots_saveable", "minimal"])
def test_policy_matches_no_remat(setup, reference, policy):
  cfg, batch, variables = setup
  ref_loss, ref_grads = reference
  loss, grads = _loss_and_grads(cfg.replace(remat_policy=policy), batch,
                                variables)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ref_grads)[0],
                          jax.tree.leaves(grads)):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("policy,expected", [("none", 0), ("full", 2),
                                             ("minimal", 2)])
def test_policy_puts_each_layer_under_checkpoint(setup, policy, expected):
  cfg, batch, variables = setup
  model = OFATransformer(cfg.replace(remat_policy=policy))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, batch, train=False))(
      variables)
  names = [e.primitive.name for e in jaxpr.jaxpr.eqns]
  # One checkpoint (remat) region per transformer layer: 1 encoder + 1 decoder.
  assert sum(n in ("checkpoint", "remat", "remat2") for n in names) == expected


def test_policy_wraps_the_layers():
  from ofa_jax.model import layers  # pylint: disable=g-import-not-at-top
  assert remat.wrap_layer(layers.EncoderLayer, "none", (5,)) is layers.EncoderLayer
  wrapped = remat.wrap_layer(layers.EncoderLayer, "minimal", (5,))
  assert wrapped is not layers.EncoderLayer
  assert issubclass(wrapped, nn.Module)
  assert (remat.checkpoint_policy("minimal")
          is jax.checkpoint_policies.dots_with_no_batch_dims_saveable)


def test_bad_policies_are_named():
  with pytest.raises(ValueError, match="remat_policy='everything'"):
    config_lib.get_config("tiny", remat_policy="everything")
  with pytest.raises(ValueError, match="contradicts remat_policy='minimal'"):
    config_lib.get_config("tiny", remat=True, remat_policy="minimal")
  assert config_lib.get_config("tiny", remat=True).layer_remat_policy == "full"
  with pytest.raises(ValueError, match="Unknown remat policy 'x'"):
    remat.wrap_layer(nn.Dense, "x", ())
