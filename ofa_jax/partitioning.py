"""Logical axis rules, the device mesh, and sharded jit: how ofa_jax scales.

Why logical axes: the network names every parameter dimension once (``embed``,
``mlp``, ``heads``, ``vocab``, ...) and never mentions devices. A *layout* is then
just a rule table mapping logical names to the mesh axes ``('data', 'model')``:

* data parallel: parameters replicated, the batch split over ``data``;
* FSDP: as data parallel, plus the ``embed`` dimension of parameters (and so of the
  optimizer state) split over ``data``, so every device holds 1/N of the weights;
* tensor (model) parallel: ``mlp``, ``heads``, ``joined_kv`` and ``vocab`` split over
  ``model`` (sized by ``num_partitions``). Activations follow: the FFN's hidden
  units, the attention's queries, keys, values and scores (``heads``, see
  ``model/layers.py``) and the logits (``vocab``, padded to a multiple of
  ``OFAConfig.vocab_pad_multiple`` so that it divides).

Tables are tuples built fresh by a function, never module-level lists that a caller
could mutate (UIO2's pitfall); projects extend them through ``additional_rules``,
which take precedence over the standard ones.

Rule order matters: flax assigns, per array, each mesh axis at most once, taking
rules in order. ``batch -> data`` comes first so that activations
``[batch, length, embed]`` keep the batch split and leave ``embed`` replicated, while
parameters (which have no ``batch`` axis) get ``embed -> data`` under FSDP.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

Rule = tuple[str, Any]
Rules = tuple[Rule, ...]

# Logical names that are always replicated (listed so that the rule table
# documents them; flax replicates unknown names as well). The encoder adapters
# add the axes of their own activations (`replicated_axes` of their classes).
_REPLICATED_AXES = ("length", "kv", "relpos_buckets", "abspos_buckets", "layers",
                    "stack", "channels", "conv_height", "conv_width", "norm",
                    "type", "head_dim", "kv_length")


def _replicated_axes() -> tuple[str, ...]:
  """`_REPLICATED_AXES` plus every registered adapter's own axes."""
  from ofa_jax.model import adapters  # pylint: disable=g-import-not-at-top
  out = list(_REPLICATED_AXES)
  for _, cls in adapters.registered_classes():
    out += [a for a in getattr(cls, "replicated_axes", ()) if a not in out]
  return tuple(out)


def make_mesh(num_partitions: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh: `num_partitions` devices per model replica.

  Devices are taken in `jax.devices()` order, which keeps the devices of one host
  contiguous, so the model axis (the chattiest one) stays inside a host.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_partitions < 1 or n % num_partitions:
    raise ValueError(
        f"make_mesh: num_partitions={num_partitions} must be >= 1 and divide the "
        f"{n} available devices")
  grid = np.asarray(devices, dtype=object).reshape(n // num_partitions,
                                                   num_partitions)
  auto = (jax.sharding.AxisType.Auto,) * 2
  return Mesh(grid, MESH_AXES, axis_types=auto)


def standard_logical_axis_rules(*, fsdp: bool = False,
                                additional_rules: Sequence[Rule] = ()) -> Rules:
  """The t5x-style table; `additional_rules` come first and so win.

  Model parallel needs no switch: with `num_partitions == 1` the `model` mesh axis
  has size 1 and its rules are no-ops.
  """
  for rule in additional_rules:
    if (not isinstance(rule, (tuple, list)) or len(rule) != 2
        or not isinstance(rule[0], str)):
      raise ValueError(
          f"additional_rules: each rule must be a (logical_name, mesh_axes) pair, "
          f"got {rule!r}")
  rules: list[Rule] = [tuple(r) for r in additional_rules]
  rules += [("batch", DATA_AXIS)]
  rules += [("vocab", MODEL_AXIS), ("mlp", MODEL_AXIS), ("heads", MODEL_AXIS),
            ("joined_kv", MODEL_AXIS)]
  if fsdp:
    # The ResNet's conv kernels (~16% of base) carry no `embed` axis; sharding
    # their output channels brings FSDP's per-device state to ~1/8 (BENCHMARKS.md).
    rules += [("embed", DATA_AXIS), ("conv_out", DATA_AXIS)]
  rules += [("embed", None), ("mlp_activations", None)]
  rules += [(name, None) for name in _replicated_axes()]
  return tuple(rules)


def _is_spec(x: Any) -> bool:
  return isinstance(x, PartitionSpec)


@dataclasses.dataclass(frozen=True)
class Partitioner:
  """A mesh plus a rule table: everything needed to place trees and jit steps."""

  mesh: Mesh
  rules: Rules

  # ---- shardings ------------------------------------------------------------
  def logical_specs(self, abstract_tree: Any) -> Any:
    """Logical PartitionSpecs of a tree whose leaves may be `nn.Partitioned`.

    Unboxed leaves (step counters, scalars of the optimizer state) get `P()`.
    """
    return nn.get_partition_spec(abstract_tree)

  def mesh_specs(self, abstract_tree: Any) -> Any:
    """Mesh-axis PartitionSpecs, structured like the unboxed tree.

    A dimension that the rules split over mesh axes whose size does not divide
    it (e.g. a 13289-id vocabulary over a 2-way `model` axis) is replicated
    instead, with a log line: odd sizes then cost memory, not a crash.
    """
    logical = self.logical_specs(abstract_tree)
    flat_l, treedef = jax.tree.flatten(logical, is_leaf=_is_spec)
    leaves = jax.tree.leaves(nn.meta.unbox(abstract_tree))
    if len(leaves) != len(flat_l):
      raise ValueError(f"mesh_specs: {len(leaves)} leaves but {len(flat_l)} specs")
    fitted = []
    for leaf, lspec in zip(leaves, flat_l):
      mspec = nn.logical_to_mesh_axes(lspec, self.rules)
      fitted.append(self._fit(tuple(getattr(leaf, "shape", ())), mspec, lspec))
    return jax.tree.unflatten(treedef, fitted)

  def _fit(self, shape: tuple[int, ...], spec: PartitionSpec,
           logical: PartitionSpec) -> PartitionSpec:
    axes = list(spec) + [None] * (len(shape) - len(spec))
    out = []
    for dim, ax in zip(shape, axes):
      names = ax if isinstance(ax, tuple) else (ax,)
      size = 1
      for a in names:
        if a is not None:
          size *= self.mesh.shape[a]
      if size > 1 and dim % size:
        logging.info("partitioning: dimension %d of shape %s (logical %s) is not "
                     "divisible by mesh axes %s of size %d: replicated", dim,
                     shape, tuple(logical), ax, size)
        ax = None
      out.append(ax)
    while out and out[-1] is None:
      out.pop()
    return PartitionSpec(*out)

  def logical_to_mesh_shardings(self, abstract_tree: Any) -> Any:
    """NamedShardings for a (possibly boxed) abstract tree.

    The result has the structure of the *unboxed* tree (`nn.meta.unbox`), so it
    can be used directly as jit in/out shardings of unboxed state.
    """
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s),
                        self.mesh_specs(abstract_tree), is_leaf=_is_spec)

  def sharding(self, *mesh_axes: Any) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(*mesh_axes))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def data_sharding(self) -> NamedSharding:
    """Batches: leading axis split over `data`, rest replicated."""
    return NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  @property
  def num_data_shards(self) -> int:
    return self.mesh.shape[DATA_AXIS]

  def batch_shardings(self, batch: Any) -> Any:
    """A data sharding per leaf of a batch (all leaves share the batch axis)."""
    return jax.tree.map(lambda _: self.data_sharding, batch)

  def shard_batch(self, batch: Any) -> Any:
    """Host batch (numpy) -> global arrays split over `data`.

    Multi-host: each host passes its own slice of the global batch (its rows, in
    process order); `jax.make_array_from_process_local_data` assembles them.
    """
    def put(x):
      x = np.asarray(x)
      if x.ndim == 0:
        raise ValueError("shard_batch: every batch feature needs a batch axis, got "
                         "a scalar")
      return jax.make_array_from_process_local_data(self.data_sharding, x)
    return jax.tree.map(put, batch)

  # ---- jit ------------------------------------------------------------------
  def jit(self, fn: Callable[..., Any], *, in_shardings: Any,
          out_shardings: Any, donate_argnums: Sequence[int] = (),
          static_argnums: Sequence[int] = ()) -> Callable[..., Any]:
    """`jax.jit` with shardings, run under this mesh (`jax.set_mesh`).

    The mesh is set while tracing so that activation constraints
    (`nn.with_logical_constraint`) inside the model resolve against it.
    """
    jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                     donate_argnums=tuple(donate_argnums),
                     static_argnums=tuple(static_argnums))
    mesh, rules = self.mesh, self.rules

    class _Wrapped:
      """Calls and lowers the jitted fn with the mesh and rules active."""

      def __call__(self, *args, **kwargs):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          return jitted(*args, **kwargs)

      def lower(self, *args, **kwargs):
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          return jitted.lower(*args, **kwargs)

    return _Wrapped()


def make_partitioner(num_partitions: int = 1, fsdp: bool = False,
                     additional_rules: Sequence[Rule] = (),
                     devices: Optional[Sequence[jax.Device]] = None
                     ) -> Partitioner:
  """The one call a trainer makes (gin-configurable from the run files)."""
  return Partitioner(
      mesh=make_mesh(num_partitions, devices),
      rules=standard_logical_axis_rules(fsdp=fsdp,
                                        additional_rules=additional_rules))


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of (sharded) jax arrays: the layout's cost."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.addressable_shards[0].data
    total += shard.size * shard.dtype.itemsize
  return total


def describe(tree: Any, partitioner: Partitioner) -> list[str]:
  """One line per leaf: path, shape, dtype, logical axes, mesh axes.

  `tree` may be boxed (logical names shown) or abstract.
  """
  logical = partitioner.logical_specs(tree)
  mesh_axes = partitioner.mesh_specs(tree)
  values = nn.meta.unbox(tree)
  flat_v = jax.tree_util.tree_flatten_with_path(values)[0]
  flat_l = jax.tree.leaves(logical, is_leaf=_is_spec)
  flat_m = jax.tree.leaves(mesh_axes, is_leaf=_is_spec)
  lines = []
  for (path, v), lspec, mspec in zip(flat_v, flat_l, flat_m):
    name = jax.tree_util.keystr(path)
    lines.append(f"{name:<70} {str(tuple(v.shape)):<20} {str(v.dtype):<8} "
                 f"logical={tuple(lspec)} mesh={tuple(mspec)}")
  return lines
