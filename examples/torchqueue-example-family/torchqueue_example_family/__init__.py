"""An example torchqueue model family, ``resmlp``: a residual MLP for feature rows.

``family`` is its torch-free half and ``model`` its torch half; nothing is imported here,
so that importing ``family`` alone never loads torch."""
