"""Task plans: one instruction line compiled into a SeqIO task.

`registry` registers tasks and mixtures and derives the frozen `TaskPlan`;
`build` constructs one example's features in graph-mode TF; `pipeline` is the
tf.data side of the task (seqio preprocessors, skip counting, postprocessing);
`source` tags a data source's examples with their split.
"""

from ofa_jax.plan.registry import (DecodingSpec, OFATask, TaskPlan,
                                   output_features, register_mixture,
                                   register_task, skip_counts, task_plan)

__all__ = ["DecodingSpec", "OFATask", "TaskPlan", "output_features",
           "register_mixture", "register_task", "skip_counts", "task_plan"]
