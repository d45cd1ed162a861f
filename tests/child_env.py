"""The environment of a child Python process that must import the same portgrad as the tests: the
installed package in CI, the source tree with a dev build in place during development."""
import os

import portgrad


def child_env(*extra_paths):
    where = os.path.dirname(os.path.dirname(os.path.abspath(portgrad.__file__)))
    paths = [where, *extra_paths] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
