"""Per-object measurements, computed exactly from blocks.

:mod:`~bigseg.measure.partials` (mergeable per-fragment statistics), :mod:`~bigseg.measure.columns` (the table's
columns from merged partials), :mod:`~bigseg.measure.stage` (the measure stage's worker tasks).

Inside bigseg, import the modules (``from bigseg.measure import partials``), never the package itself:
``bigseg.measure`` is also the public function that measures a label image.
"""
