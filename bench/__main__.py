"""``python -m bench``: the benchmark suite's entry point (the same as ``python bench/run.py``)."""
import sys

from bench import _threads

_threads.configure_from_argv(sys.argv[1:])  # before numpy, torch or jax is imported

from bench.run import main  # noqa: E402

sys.exit(main())
