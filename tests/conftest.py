import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_host_dir(tmp_path_factory):
    """A tiny random Llama with SmolLM2's tokenizer, materialised like a real host."""
    from cambrian.config import HostConfig
    from cambrian.host import materialize

    out = tmp_path_factory.mktemp("hosts") / "tiny"
    materialize(HostConfig(source="tiny-random"), out)
    return out


@pytest.fixture(scope="session")
def tiny_host(tiny_host_dir):
    from cambrian.host import load_host

    return load_host(tiny_host_dir)
