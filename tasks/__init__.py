"""Prefect tasks: thin wrappers around the typed steps of ``housegan.steps``.

The pattern every task follows (new stages such as evaluate and promote too):

1. The step lives in the library, ``housegan/steps/<stage>.py``: ``@step("section", ...)`` over
   ``fn(inputs, *sections, storage_options=..., progress=...) -> result``, ``inputs`` and
   ``result`` frozen dataclasses (``to_json``/``from_json``). The CLI runs it as
   ``step.run(inputs, settings, ...)``.
2. The task, in ``tasks/<stage>.py``, takes one parameter, ``inputs``, and returns the step's
   result unchanged::

       @step_task(steps.cluster_photos, retries=1, retry_delay_seconds=10)
       def cluster_task(inputs: ClusterInput) -> ClusterResult:
           result = run_step(steps.cluster_photos, inputs)  # configured settings
           task_logger(__name__).info(...)   # plus artifacts when in_task_run()
           return result

   ``step_task`` names the task after the step and caches it by ``step_cache_key``: a hash of
   the step's inputs and of the settings sections it declares, nothing listed by hand
   (``cache=False`` for steps with side effects: publishing, logging, training).
3. The flow, in ``flows/<stage>.py``, only wires: it builds each step's inputs from earlier
   results (``ClusterInput.after(source, embedded)``, the same constructors the CLI's
   ``run_<stage>`` uses) and calls ``run_fresh(task, inputs)``, which reruns a cached task
   whose files have vanished from the store.
"""
