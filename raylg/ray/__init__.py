"""The Ray edge: a trial as a Ray Train run (trainer.py), sweeps with Tune + ASHA (sweep.py),
and the sweep file format (spec.py). Nothing below this package imports Ray."""
