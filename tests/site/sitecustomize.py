"""Loaded at start-up by the Python processes the tests start (tests/site is on their PYTHONPATH).

With MNIST_LIGHTNING_TEST_SYNTHETIC=DIR, the process accepts the synthetic files in DIR as MNIST. An environment
variable reaches every process, DDP's workers too, which Lightning starts as `python -m mnist_lightning ...`.

The trust is given when mnist_lightning.datasets is imported, not here: most processes that inherit the variable never
import it (jsonargparse's `python -c 'print(sys.path)'` in every CLI process, ~0.2 s of numpy and the package each).
"""

import os

if os.environ.get("MNIST_LIGHTNING_TEST_SYNTHETIC"):
    import importlib.abc
    import importlib.util
    import sys

    class TrustOnImport(importlib.abc.MetaPathFinder):
        """Runs `trust_synthetic_mnist` right after mnist_lightning.datasets is first imported."""

        def find_spec(self, name, path, target=None):
            if name != "mnist_lightning.datasets":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                from tests.helpers import trust_synthetic_mnist

                trust_synthetic_mnist(os.environ["MNIST_LIGHTNING_TEST_SYNTHETIC"])

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, TrustOnImport())
