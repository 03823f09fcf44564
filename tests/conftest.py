import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

import trilens  # noqa: E402

from tiny import CONFIGS, save  # noqa: E402

ARCHS = list(CONFIGS)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_path(model_root):
    """``tiny_path(name)`` -> directory of the saved tiny model ``name``."""
    return lambda name: save(name, model_root)


@pytest.fixture(scope="session")
def tiny(tiny_path):
    """``tiny(name)`` -> a loaded ``trilens.Model`` (cached per session; do not mutate it)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = trilens.load(tiny_path(name))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def zoo():
    """``zoo(name)`` -> the loaded zoo model ``zoo:name`` (cached per session; do not mutate it)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = trilens.load(f"zoo:{name}")
        return cache[name]

    return get
