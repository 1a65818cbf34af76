"""Techniques: each turns the original version into one candidate artifact.

A technique is parsed from one ``--try`` item (``plan.parse_try``) and built by
``build(ctx, out_dir) -> Built``: it writes the artifact and returns the candidate's
config plus what it changed (sparsity, parameter counts, int8 layers) for the report.
It raises TechniqueNotApplicable (refused, with the reason) or TechniqueSkipped (this
machine cannot do it: no GPU, no TensorRT).
"""
