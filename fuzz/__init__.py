"""Coverage-guided fuzzing harnesses for the sans-I/O wire code (``make fuzz``).

Each module has a ``test_one_input(data)`` entry point that atheris drives and
that the regression tests replay; the harnesses need nothing but the product
itself, so the replays run without atheris installed.
"""
