"""Reports people read and scripts parse: plain-text tables, ``report.json`` and
``per_sample.csv``, one module per command's output (``evaluation``: ``advx eval``;
``attack``: ``advx attack``; ``certification``: ``advx certify``) on the helpers of
``common``; the pictures are ``advx.figures``. Nothing here computes a figure: every
number comes from a result object (``Evaluation``, ``DatasetResult``, ``CertifyRun``)."""
