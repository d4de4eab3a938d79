import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="cambrian-prefect-"))
os.environ.setdefault("CAMBRIAN_HOME", tempfile.mkdtemp(prefix="cambrian-home-"))  # the step store
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # its exit-time INFO lines hit closed pytest streams


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


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    from cambrian.challenges import write_dataset
    from cambrian.config import ChallengeConfig

    out = tmp_path_factory.mktemp("data") / "challenges"
    write_dataset(ChallengeConfig(train_per_cell=12, probe_per_cell=3, holdout_per_cell=3, test_per_cell=3,
                                  transfer_per_cell=3, worked=["math"]), 0, out)  # as TINY's
    return out


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory):
    """One Prefect API server for the session, as users run one: every `cambrian` process a test
    starts reports to it instead of starting a temporary server of its own (~5 s each). No MLflow
    server: tests track to sqlite files of their own."""
    from servers import local_servers

    before = os.environ.get("PREFECT_API_URL")
    with local_servers(tmp_path_factory.mktemp("servers"), mlflow=False) as (api, _):
        os.environ["PREFECT_API_URL"] = api
        try:
            yield api
        finally:
            if before is None:
                del os.environ["PREFECT_API_URL"]
            else:
                os.environ["PREFECT_API_URL"] = before
