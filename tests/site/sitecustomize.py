"""Loaded at start-up by the Python processes the tests start (tests/site is on their PYTHONPATH).

With MNIST_LIGHTNING_TEST_SYNTHETIC=DIR, the process accepts the synthetic files in DIR as MNIST. An environment
variable reaches every process, DDP's workers too, which Lightning starts as `python -m mnist_lightning ...`.
"""

import os

if os.environ.get("MNIST_LIGHTNING_TEST_SYNTHETIC"):
    from tests.helpers import trust_synthetic_mnist

    trust_synthetic_mnist(os.environ["MNIST_LIGHTNING_TEST_SYNTHETIC"])
