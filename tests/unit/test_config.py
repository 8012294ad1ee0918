"""Settings: source precedence, path resolution, validation, masking.

Every test runs with the real environment scrubbed of the variables Settings reads,
and with an explicit config file inside ``tmp_path``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator import config, errors
from orchestrator.config import CONFIG_ENV, Settings, env_name, load_settings, resolve_config_file

SECRET_BFL = "bfl-secret-value-0123456789"
SECRET_V0 = "v0-secret-value-abcdefghij"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {env_name(f) for f in Settings.model_fields} | {CONFIG_ENV}
    for name in names:
        monkeypatch.delenv(name, raising=False)
    # settings are read case-insensitively: drop lower/mixed-case spellings too
    for key in list(os.environ):
        if key.upper() in names:
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    d = tmp_path / "conf"
    d.mkdir()
    return d


@pytest.fixture
def cfg_file(cfg_dir: Path) -> Path:
    """A config file whose data_dir is inside tmp_path (tests may rewrite it)."""
    f = cfg_dir / "orchestrator.toml"
    f.write_text('data_dir = "data"\n')
    return f


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work from an unrelated folder, to prove nothing resolves against the cwd."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def write_toml(path: Path, **values: str | int | float) -> None:
    lines = []
    for k, v in values.items():
        lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")


def problems_of(exc: pytest.ExceptionInfo[errors.ConfigError]) -> list[str]:
    return list(exc.value.problems)


# --- precedence -------------------------------------------------------------------------------


def test_default_when_no_source_sets_it(cfg_file: Path) -> None:
    s = load_settings(config_file=cfg_file)
    assert s.log_level == "INFO"
    assert s.flux_poll_interval_s == 0.5
    assert s.port == 8000


def test_toml_beats_default(cfg_file: Path) -> None:
    write_toml(cfg_file, data_dir="data", log_level="ERROR", flux_poll_interval_s=2.5)
    s = load_settings(config_file=cfg_file)
    assert s.log_level == "ERROR"
    assert s.flux_poll_interval_s == 2.5


def test_dotenv_beats_toml(cfg_file: Path) -> None:
    write_toml(cfg_file, data_dir="data", log_level="ERROR", flux_poll_interval_s=2.5)
    (cfg_file.parent / ".env").write_text("LOG_LEVEL=WARNING\nFLUX_POLL_INTERVAL_S=3.5\n")
    s = load_settings(config_file=cfg_file)
    assert s.log_level == "WARNING"
    assert s.flux_poll_interval_s == 3.5


def test_env_beats_dotenv(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(cfg_file, data_dir="data", log_level="ERROR", flux_poll_interval_s=2.5)
    (cfg_file.parent / ".env").write_text("LOG_LEVEL=WARNING\nFLUX_POLL_INTERVAL_S=3.5\n")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("FLUX_POLL_INTERVAL_S", "4.5")
    s = load_settings(config_file=cfg_file)
    assert s.log_level == "DEBUG"
    assert s.flux_poll_interval_s == 4.5


def test_override_beats_env(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(cfg_file, data_dir="data", log_level="ERROR", flux_poll_interval_s=2.5)
    (cfg_file.parent / ".env").write_text("LOG_LEVEL=WARNING\nFLUX_POLL_INTERVAL_S=3.5\n")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("FLUX_POLL_INTERVAL_S", "4.5")
    s = load_settings(
        config_file=cfg_file, overrides={"log_level": "CRITICAL", "flux_poll_interval_s": 5.5}
    )
    assert s.log_level == "CRITICAL"
    assert s.flux_poll_interval_s == 5.5


def test_none_override_does_not_mask_lower_layers(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI flag that was not given arrives as None and must not win."""
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    s = load_settings(config_file=cfg_file, overrides={"log_level": None})
    assert s.log_level == "DEBUG"


def test_dotenv_in_cwd_is_ignored(cfg_file: Path, elsewhere: Path) -> None:
    (elsewhere / ".env").write_text("LOG_LEVEL=DEBUG\n")
    (elsewhere / "orchestrator.toml").write_text('log_level = "DEBUG"\n')
    assert load_settings(config_file=cfg_file).log_level == "INFO"


def test_aliased_fields_from_env_and_toml(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(cfg_file, data_dir="data", port=9001, host="0.0.0.0")
    s = load_settings(config_file=cfg_file)
    assert (s.port, s.host) == (9001, "0.0.0.0")
    monkeypatch.setenv("ORCHESTRATOR_PORT", "9002")
    monkeypatch.setenv("ORCHESTRATOR_HOST", "10.0.0.1")
    s = load_settings(config_file=cfg_file)
    assert (s.port, s.host) == (9002, "10.0.0.1")
    s = load_settings(config_file=cfg_file, overrides={"port": 9003})
    assert s.port == 9003


def test_missing_config_file_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    s = load_settings(config_file=tmp_path / "nope" / "orchestrator.toml")
    assert s.log_level == "INFO"
    assert s.data_path == tmp_path / "d"


# --- paths -----------------------------------------------------------------------------------


def test_relative_data_dir_in_toml_resolves_against_config_folder(
    cfg_file: Path, elsewhere: Path
) -> None:
    write_toml(cfg_file, data_dir="rel/data")
    s = load_settings(config_file=cfg_file)
    expected = (cfg_file.parent / "rel" / "data").resolve()
    assert s.data_path == expected
    assert expected.is_dir()
    assert not (elsewhere / "rel").exists()


def test_relative_data_dir_in_env_resolves_against_config_folder(
    cfg_file: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_DIR", "from-env")
    s = load_settings(config_file=cfg_file)
    assert s.data_path == (cfg_file.parent / "from-env").resolve()
    assert not (elsewhere / "from-env").exists()


def test_relative_data_dir_in_dotenv_and_override(cfg_file: Path, elsewhere: Path) -> None:
    (cfg_file.parent / ".env").write_text("DATA_DIR=dotenv-data\n")
    s = load_settings(config_file=cfg_file)
    assert s.data_path == (cfg_file.parent / "dotenv-data").resolve()
    s = load_settings(config_file=cfg_file, overrides={"data_dir": Path("cli-data")})
    assert s.data_path == (cfg_file.parent / "cli-data").resolve()
    assert list(elsewhere.iterdir()) == []


def test_relative_config_file_is_the_only_cwd_relative_path(
    cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(config_file=Path("conf/orchestrator.toml"))
    assert s.config_file == cfg_file.resolve()
    assert s.data_path == (cfg_file.parent / "data").resolve()


def test_derived_defaults(cfg_file: Path) -> None:
    s = load_settings(config_file=cfg_file)
    data = (cfg_file.parent / "data").resolve()
    assert s.data_path == data
    assert s.output_path == data / "outputs"
    assert s.jobs_path == data / "jobs"
    assert s.db_url == f"sqlite+aiosqlite:///{data / 'orchestrator.db'}"
    assert s.is_sqlite
    for d in (data, data / "outputs", data / "jobs"):
        assert d.is_dir()
    # the write test leaves nothing behind
    assert [p.name for p in (data / "outputs").iterdir()] == []


def test_explicit_output_and_jobs_dirs(cfg_file: Path, tmp_path: Path) -> None:
    write_toml(cfg_file, data_dir="data", output_dir="out", jobs_dir=str(tmp_path / "abs-jobs"))
    s = load_settings(config_file=cfg_file)
    assert s.output_path == (cfg_file.parent / "out").resolve()
    assert s.jobs_path == tmp_path / "abs-jobs"


@pytest.mark.parametrize(
    "url",
    ["sqlite:///db/app.db", "sqlite+aiosqlite:///db/app.db", "sqlite+aiosqlite:///./db/app.db"],
)
def test_relative_sqlite_path_resolves_against_config_folder(
    cfg_file: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    s = load_settings(config_file=cfg_file)
    assert s.db_url == f"sqlite+aiosqlite:///{(cfg_file.parent / 'db' / 'app.db').resolve()}"


def test_absolute_sqlite_path_kept(
    cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    assert load_settings(config_file=cfg_file).db_url == f"sqlite+aiosqlite:///{tmp_path}/x.db"


def test_sqlite_memory_kept(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///:memory:")
    assert load_settings(config_file=cfg_file).db_url == "sqlite+aiosqlite:///:memory:"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@db:5432/app", "postgresql+asyncpg://u@db:5432/app"),
        ("postgres://u@db/app", "postgresql+asyncpg://u@db/app"),
        ("postgresql+asyncpg://u@db/app", "postgresql+asyncpg://u@db/app"),
    ],
)
def test_postgres_url_normalised(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    s = load_settings(config_file=cfg_file)
    assert s.db_url == expected
    assert not s.is_sqlite


def test_blank_database_url_means_default(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "  ")
    s = load_settings(config_file=cfg_file)
    assert s.db_url == f"sqlite+aiosqlite:///{s.data_path / 'orchestrator.db'}"


# --- invalid values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLUX_BASE_URL", "not-a-url"),
        ("LOG_LEVEL", "LOUD"),
        ("ORCHESTRATOR_PORT", "99999"),
        ("ORCHESTRATOR_PORT", "0"),
        ("DATABASE_URL", "mysql://x"),
        ("FLUX_POLL_INTERVAL_S", "0"),
        ("WORKER_CONCURRENCY", "many"),
        ("LOG_FORMAT", "xml"),
        ("COMFY_URL", "ftp//nope"),
    ],
)
def test_invalid_value_names_the_variable(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file)
    problems = problems_of(info)
    assert len(problems) == 1
    assert problems[0].startswith(f"{var}: ")
    assert "Value error, " not in problems[0]


def test_every_problem_is_reported_at_once(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = {
        "FLUX_BASE_URL": "not-a-url",
        "LOG_LEVEL": "LOUD",
        "ORCHESTRATOR_PORT": "99999",
        "DATABASE_URL": "mysql://x",
    }
    for k, v in bad.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file)
    problems = problems_of(info)
    assert sorted(p.split(":", 1)[0] for p in problems) == sorted(bad)
    assert any("mysql" in p for p in problems)
    assert info.value.extra["problems"] == problems


def test_invalid_value_in_toml_names_the_variable(cfg_file: Path) -> None:
    write_toml(cfg_file, data_dir="data", flux_max_active=0)
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file)
    assert [p.split(":", 1)[0] for p in problems_of(info)] == ["FLUX_MAX_ACTIVE"]


def test_unwritable_data_dir(
    cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DATA_DIR", str(blocker / "data"))
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file)
    problems = problems_of(info)
    assert any(p.startswith("DATA_DIR: ") and str(blocker / "data") in p for p in problems)
    # the check can be skipped (e.g. by `config show`)
    s = load_settings(config_file=cfg_file, check_dirs=False)
    assert s.data_path == blocker / "data"


def test_unwritable_output_dir_named(
    cfg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("OUTPUT_DIR", str(blocker / "out"))
    with pytest.raises(errors.ConfigError) as info:
        load_settings(config_file=cfg_file)
    assert [p.split(":", 1)[0] for p in problems_of(info)] == ["OUTPUT_DIR"]


# --- small conversions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "level"), [("debug", "DEBUG"), ("Warning", "WARNING")])
def test_lower_case_log_level(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch, raw: str, level: str
) -> None:
    monkeypatch.setenv("LOG_LEVEL", raw)
    assert load_settings(config_file=cfg_file).log_level == level


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_api_key_is_none(cfg_file: Path, monkeypatch: pytest.MonkeyPatch, blank: str) -> None:
    monkeypatch.setenv("BFL_API_KEY", blank)
    monkeypatch.setenv("V0_API_KEY", blank)
    s = load_settings(config_file=cfg_file)
    assert s.bfl_api_key is None
    assert s.v0_api_key is None
    assert s.secret_values() == []


def test_api_key_read(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", SECRET_BFL)
    s = load_settings(config_file=cfg_file)
    assert s.bfl_api_key is not None
    assert s.bfl_api_key.get_secret_value() == SECRET_BFL
    assert SECRET_BFL not in repr(s)
    assert s.secret_values() == [SECRET_BFL]


# --- masked() ------------------------------------------------------------------------------------


def test_masked_hides_secrets(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", SECRET_BFL)
    monkeypatch.setenv("V0_API_KEY", SECRET_V0)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2-pass@db.internal:5432/orch")
    s = load_settings(config_file=cfg_file)
    rows = s.masked()
    blob = "\n".join(f"{k}={v}" for k, v in rows.items())
    assert SECRET_BFL not in blob
    assert SECRET_V0 not in blob
    assert "hunter2-pass" not in blob
    assert rows["DATABASE_URL"] == "postgresql+asyncpg://app:****@db.internal:5432/orch"
    assert rows["BFL_API_KEY"] == f"**** (set, {len(SECRET_BFL)} characters)"
    assert rows["V0_API_KEY"] == f"**** (set, {len(SECRET_V0)} characters)"
    assert SECRET_BFL[-4:] not in blob and SECRET_V0[-4:] not in blob
    assert sorted(s.secret_values()) == sorted([SECRET_BFL, SECRET_V0])


def test_masked_short_secret_shows_nothing(cfg_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "short-key")
    rows = load_settings(config_file=cfg_file).masked()
    assert rows["BFL_API_KEY"] == "**** (set, 9 characters)"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "(not set)"),
        ("k", "**** (set, 1 character)"),
        ("abcdefghijklmnop", "**** (set, 16 characters)"),
    ],
)
def test_mask_secret_shows_set_and_length_only(value: str, shown: str) -> None:
    assert config.mask_secret(value) == shown


def test_masked_keys_are_env_names(cfg_file: Path) -> None:
    rows = load_settings(config_file=cfg_file).masked()
    expected = {env_name(f) for f, info in Settings.model_fields.items() if not info.exclude}
    assert set(rows) == expected
    assert "CONFIG_FILE" not in rows
    assert rows["BFL_API_KEY"] == "(not set)"
    assert rows["ORCHESTRATOR_PORT"] == "8000"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+asyncpg://u:p%40ss@h/db", "postgresql+asyncpg://u:****@h/db"),
        ("postgresql+asyncpg://u:p@ss@h/db", "postgresql+asyncpg://u:****@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite+aiosqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_mask_db_url(url: str, shown: str) -> None:
    assert config.mask_db_url(url) == shown


# --- which config file --------------------------------------------------------------------------


def test_resolve_config_file_explicit_wins(tmp_path: Path) -> None:
    explicit = tmp_path / "explicit.toml"
    environ = {CONFIG_ENV: str(tmp_path / "from-env.toml")}
    assert resolve_config_file(explicit, environ) == explicit.resolve()


def test_resolve_config_file_from_env(tmp_path: Path) -> None:
    environ = {CONFIG_ENV: str(tmp_path / "from-env.toml")}
    assert resolve_config_file(None, environ) == (tmp_path / "from-env.toml").resolve()


@pytest.mark.parametrize("environ", [{}, {CONFIG_ENV: ""}, {CONFIG_ENV: "   "}])
def test_resolve_config_file_default(environ: dict[str, str]) -> None:
    got = resolve_config_file(None, environ)
    assert got == config.default_config_file()
    assert got.name == "orchestrator.toml"
    assert got.is_absolute()


def test_resolve_config_file_reads_process_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "via-env.toml"))
    assert resolve_config_file() == (tmp_path / "via-env.toml").resolve()


def test_load_settings_uses_orchestrator_config(
    cfg_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(cfg_file, data_dir="data", log_level="ERROR")
    monkeypatch.setenv(CONFIG_ENV, str(cfg_file))
    s = load_settings()
    assert s.config_file == cfg_file.resolve()
    assert s.log_level == "ERROR"
    assert s.data_path == (cfg_file.parent / "data").resolve()
