"""Review: what people decide about images, and what follows from it.

* ``core.review.verdicts``: the verdicts, kept in one SQLite file beside the runs (``ReviewDB``);
* ``core.review.reviewed``: a run seen through the verdicts (``RunReview``), metrics as reviewed;
* ``core.review.export``: CSV files handed to people (corrections, manifests), spreadsheet-safe;
* ``core.review.corrections``: a corrections file read, checked and applied to a data set for training.

Nothing here imports TensorFlow or umap.
"""
