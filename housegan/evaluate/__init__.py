"""Evaluation of a trained generator, one idea per module (no Prefect; MLflow via tracking):

- ``sampling``: the evaluation images per (city, type) cell and the real reference, embedded by
  the curation embedder (real features cached per dataset and model tag);
- ``knn``: exact nearest neighbours in blocks within a memory budget;
- ``novelty``: nearest training image, calibrated copy threshold, copy rate, authenticity;
- ``fidelity``: Fréchet distance, KID, precision/recall, density/coverage;
- ``conditioning``: classifier accuracy of the city / type asked for, and CAS;
- ``figures``: the closest (generated, training) pairs per cell;
- ``evaluation``: ``evaluate_model`` (one ``ModelEvaluation``) and ``evaluate_and_log``;
- ``promote``: the gate that moves the ``champion`` alias, and ``rollback``.
"""
