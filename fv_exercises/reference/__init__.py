"""Reference solutions, generated from solutions/*.ipynb by `python -m fv_exercises.course build`."""
