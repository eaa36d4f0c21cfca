import dataclasses
import json
import re

import pytest

from job import config
from job.errors import EXIT_CONFIG, ConfigError
from tests.support.jobs import ROOT


def test_defaults_come_from_the_fast_recipe():
    cfg = config.from_env({})
    t = cfg.training
    assert (t.recipe, t.epochs, t.batch_size, t.learning_rate) == ("fast", 20, 512, 0.005)
    assert t.dataset == "mnist" and cfg.output_uri == "./runs"
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
    t = cfg.training
    assert cfg.run_id == "nightly-42" and t.dataset == "fashion_mnist"
    assert (t.epochs, t.batch_size, t.learning_rate) == (3, 256, 0.003)
    assert t.train_limit == 100 and t.test_limit is None and cfg.logging.format == "json"


def test_empty_values_count_as_unset():
    cfg = config.from_env({"EPOCHS": "", "DATA_URI": "  "})
    assert cfg.training.epochs == 20 and cfg.data_uri is None


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
        ({"EMA_MOMENTUM": "1"}, "EMA_MOMENTUM"),  # never moves: the average would stay at the start
        ({"EMA_MOMENTUM": "-0.1"}, "EMA_MOMENTUM"),
        ({"EMA_MOMENTUM": "nan"}, "EMA_MOMENTUM"),
        # Strict parsing: ASCII digits only, no separators, sane ranges.
        ({"EPOCHS": "1_0"}, "EPOCHS"),
        ({"EPOCHS": "\u0661\u0662"}, "EPOCHS"),  # Arabic-Indic digits, which int() accepts
        ({"LEARNING_RATE": "1e-320"}, "LEARNING_RATE"),
        ({"LEARNING_RATE": "0x1p-3"}, "LEARNING_RATE"),
        ({"JOB_NAME": "x\nCOS_ENDPOINT=http://evil"}, "JOB_NAME"),
        ({"COS_ACCESS_KEY_ID": "key id"}, "COS_ACCESS_KEY_ID"),
        ({"WML_URL": "http://plain"}, "WML_URL"),
        ({"WML_NODES": "0"}, "WML_NODES"),
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
    assert (cfg.training.epochs, cfg.training.batch_size) == (3, 32)


def test_dotenv_values_are_taken_as_written_not_interpolated(tmp_path, monkeypatch):
    """A `${NAME}` in .env stays as written: expanding it would pull any variable of the
    process (a secret included) into a value that `config` prints and the logs carry."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("OUTPUT_URI=/x/${COS_SECRET_ACCESS_KEY}\nWORK_DIR=$HOME\n")
    cfg = config.load({"COS_SECRET_ACCESS_KEY": "s3cr3t-value-123", "HOME": "/home/someone"})
    assert cfg.output_uri == "/x/${COS_SECRET_ACCESS_KEY}" and cfg.work_dir == "$HOME"
    assert "s3cr3t-value-123" not in json.dumps(cfg.redacted())


def test_env_file_names_another_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prod.env").write_text("EPOCHS=7\n")
    assert config.load({"ENV_FILE": str(tmp_path / "prod.env")}).training.epochs == 7
    with pytest.raises(ConfigError, match="ENV_FILE"):
        config.load({"ENV_FILE": str(tmp_path / "missing.env")})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'EPOCHS="unterminated\n', "line 1"),
        (b"EPOCHS=3\n\xff\xfe=bad\n", "UTF-8"),
    ],
)
def test_a_broken_env_file_is_refused_not_half_read(tmp_path, content, expected):
    (tmp_path / "bad.env").write_bytes(content)
    with pytest.raises(ConfigError, match=expected) as err:
        config.load({"ENV_FILE": str(tmp_path / "bad.env")})
    assert err.value.variable == "ENV_FILE"


def test_a_control_character_in_a_secret_is_not_echoed():
    with pytest.raises(ConfigError) as err:
        config.from_env({"COS_SECRET_ACCESS_KEY": "abcdefgh\nijkl"})
    assert "abcdefgh" not in str(err.value)


def test_the_config_imports_nothing_of_the_job_but_errors_and_logs():
    imported = set()
    for path in (ROOT / "job" / "config").rglob("*.py"):
        imported |= set(re.findall(r"^\s*(?:from|import) (job[\w.]*)", path.read_text(), re.M))
    assert {m for m in imported if not m.startswith("job.config")} == {"job.errors", "job.logs"}


def _effective(var: config.Variable, cfg: config.Config) -> object:
    section = getattr(cfg, var.section) if var.section else cfg
    return getattr(section, var.attr)


@pytest.mark.parametrize("var", config.VARIABLES, ids=lambda v: v.name)
def test_every_documented_default_is_the_effective_default(var, tmp_path, monkeypatch):
    """The table's default is the one in force when the variable is unset: a value, the
    recipe's, or a rule worked out at run time. Each kind is checked its own way."""
    cfg = config.from_env({})
    if var.from_recipe:
        for recipe in config.RECIPES:
            chosen = config.from_env({"RECIPE": recipe})
            assert _effective(var, chosen) == config.RECIPES[recipe][var.attr], recipe
        assert _effective(var, cfg) == config.RECIPES[config.DEFAULT_RECIPE][var.attr]
        assert var.documented_default().startswith("recipe's")
    elif var.name == "RUN_ID":
        assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", cfg.run_id)
    elif var.name == "MODEL_NAME":
        assert cfg.promotion.model_name is None and cfg.model_name == cfg.training.dataset
    elif var.is_computed:  # worked out where the value is used: None here means "compute it"
        assert _effective(var, cfg) is None and var.documented_default() == var.default.rule
    elif var.attr is not None:
        assert _effective(var, cfg) == var.default
        shown = var.documented_default()
        if var.default is None:
            assert shown == var.unset
        elif isinstance(var.default, float):
            assert shown == f"`{var.default:g}`"
        else:
            assert shown == f"`{var.default}`"
    elif var.name == "ENV_FILE":
        monkeypatch.chdir(tmp_path)
        (tmp_path / var.default).write_text("EPOCHS=3\n")
        assert config.load({}).training.epochs == 3
    elif var.name == "WORKERS":
        assert var.default == 1 and cfg.cluster is None
    elif var.name == "WORKER_PORT":
        indexed = {"WORKERS": "2", "JOB_NAME": "j", "WORKER_SERVICE": "s",
                   "JOB_COMPLETION_INDEX": "0"}  # fmt: skip
        assert config.from_env(indexed).cluster.spec["worker"][0] == f"j-0.s:{var.default}"
    else:  # the other cluster inputs have no default: unset, nothing is built from them
        assert var.default is None and var.section == "cluster" and cfg.cluster is None


def test_every_section_field_has_its_variable():
    """The table and the dataclasses agree: no field without a variable, no variable without
    a home (except the ones read by code named in their meaning: the cluster inputs, ENV_FILE)."""
    homes = {(v.section, v.attr) for v in config.VARIABLES if v.attr}
    sections = {
        "": config.Config, "training": config.Training, "storage": config.Storage,
        "distribution": config.Distribution, "logging": config.Logging, "wml": config.Wml,
        "promotion": config.Promotion,
    }  # fmt: skip
    recipe_fields = set(config.RECIPES["fast"]) - {"epochs", "batch_size", "learning_rate",
                                                  "precision"}  # fmt: skip
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            nested = f.name in sections or f.name in ("cluster",)
            if nested or (section == "training" and f.name in recipe_fields):
                continue
            assert (section, f.name) in homes, f"{cls.__name__}.{f.name} has no variable"


def test_secrets_and_hyperparameters_are_derived_from_the_table():
    assert {"COS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "WML_APIKEY"} <= config.SECRET_NAMES
    assert "EPOCHS" in config.HYPERPARAMETERS and "COS_ENDPOINT" not in config.HYPERPARAMETERS
    cfg = config.from_env({"COS_ACCESS_KEY_ID": "AKIDEXAMPLE1", "WML_TOKEN": "tok-123456789"})
    assert sorted(cfg.secrets()) == ["AKIDEXAMPLE1", "tok-123456789"]
    shown = json.dumps(cfg.redacted())
    assert "AKIDEXAMPLE1" not in shown and "tok-123456789" not in shown


def test_the_documented_variable_table_is_the_config_table():
    page = (ROOT / "docs" / "configuration.md").read_text()
    begin, end = "<!-- variables:begin -->\n", "<!-- variables:end -->"
    assert begin in page and end in page, "docs/configuration.md lost its table markers"
    table = page.split(begin, 1)[1].split(end, 1)[0]
    assert table == config.markdown_table(), (
        "docs/configuration.md's table differs from job.config.VARIABLES: run `make docs`"
    )
