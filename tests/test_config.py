import re

import pytest

from job import config
from job.errors import EXIT_CONFIG, ConfigError


def test_defaults_come_from_the_fast_recipe():
    cfg = config.from_env({})
    assert (cfg.recipe, cfg.epochs, cfg.batch_size, cfg.learning_rate) == ("fast", 20, 512, 0.003)
    assert cfg.dataset == "mnist" and cfg.output_uri == "./runs"
    assert config.RUN_ID_RE.match(cfg.run_id)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", cfg.run_id)


def test_default_run_ids_differ():
    assert config.from_env({}).run_id != config.from_env({}).run_id


def test_values_are_parsed_and_typed():
    cfg = config.from_env(
        {
            "RUN_ID": "nightly-42",
            "DATASET": "FASHION_MNIST",
            "EPOCHS": " 3 ",
            "BATCH_SIZE": "256",
            "LEARNING_RATE": "3e-3",
            "TRAIN_LIMIT": "100",
            "LOG_FORMAT": "json",
        }
    )
    assert cfg.run_id == "nightly-42" and cfg.dataset == "fashion_mnist"
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate) == (3, 256, 0.003)
    assert cfg.train_limit == 100 and cfg.test_limit is None


def test_empty_values_count_as_unset():
    assert config.from_env({"EPOCHS": "", "DATA_URI": "  "}).epochs == 20


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"EPOCHS": "twelve"}, "EPOCHS"),
        ({"EPOCHS": "0"}, "EPOCHS"),
        ({"EPOCHS": "1.5"}, "EPOCHS"),
        ({"BATCH_SIZE": "-1"}, "BATCH_SIZE"),
        ({"LEARNING_RATE": "nan"}, "LEARNING_RATE"),
        ({"LEARNING_RATE": "0"}, "LEARNING_RATE"),
        ({"SEED": "-3"}, "SEED"),
        ({"DATASET": "cifar10"}, "DATASET"),
        ({"RUN_ID": "Has_Upper"}, "RUN_ID"),
        ({"RUN_ID": "x" * 64}, "RUN_ID"),
        ({"RUN_ID": "-leading"}, "RUN_ID"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"RECIPE": "turbo"}, "RECIPE"),
        ({"PRECISION": "int8"}, "PRECISION"),
        ({"TARGET_ACCURACY": "1.5"}, "TARGET_ACCURACY"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as err:
        config.from_env(env)
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}=")
    assert "expected" in str(err.value)
    assert err.value.exit_code == EXIT_CONFIG


def test_wml_platform_variables_are_fallbacks():
    wml = {"RESULT_DIR": "/mnt/results", "DATA_DIR": "/mnt/data", "TRAINING_ID": "training-AbC1"}
    cfg = config.from_env(wml)
    assert (cfg.output_uri, cfg.data_uri, cfg.run_id) == (
        "/mnt/results",
        "/mnt/data",
        "training-abc1",
    )
    explicit = config.from_env({**wml, "OUTPUT_URI": "/out", "RUN_ID": "mine"})
    assert (explicit.output_uri, explicit.run_id) == ("/out", "mine")


def test_dotenv_fills_in_but_process_environment_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("EPOCHS=3\nBATCH_SIZE=64\n")
    cfg = config.load({"BATCH_SIZE": "32"})
    assert (cfg.epochs, cfg.batch_size) == (3, 32)


def test_env_file_names_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prod.env").write_text("EPOCHS=7\n")
    assert config.load({"ENV_FILE": str(tmp_path / "prod.env")}).epochs == 7
    with pytest.raises(ConfigError, match="ENV_FILE"):
        config.load({"ENV_FILE": str(tmp_path / "missing.env")})
