"""Settings resolution: precedence, defaults and one-line errors for every bad value."""

from __future__ import annotations

import pytest

from greenserve.config import OPTIONS, Address, ConfigError, load, resolve, usable_cpus


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "greenserve.toml"
    path.write_text(text)
    return str(path)


class TestPrecedence:
    """defaults < file < environment < command line."""

    def test_defaults(self):
        settings = load([], {})
        assert settings.bind == (Address("127.0.0.1", 8001),)
        assert settings.workers == usable_cpus()
        assert settings.metrics_bind == Address("127.0.0.1", 9191)
        assert settings.graceful_timeout == 30
        assert settings.max_connections == 1000
        assert settings.idle_timeout == 300
        assert settings.app is None

    def test_file_then_env_then_cli(self, tmp_path):
        path = _write(tmp_path, 'workers = 3\nbind = "127.0.0.1:7000"\nidle_timeout = 5\n')
        env = {"GREENSERVE_BIND": "127.0.0.1:7001", "GREENSERVE_IDLE_TIMEOUT": "6"}
        settings = load(["--config", path, "--idle-timeout", "7"], env)
        assert settings.workers == 3  # file
        assert settings.bind == (Address("127.0.0.1", 7001),)  # env beats file
        assert settings.idle_timeout == 7  # cli beats env

    def test_config_path_from_env_and_greenserve_table(self, tmp_path):
        path = _write(tmp_path, '[greenserve]\nworkers = 5\napp = "mod:handle"\n')
        settings = load([], {"GREENSERVE_CONFIG": path})
        assert settings.workers == 5
        assert settings.app == "mod:handle"

    def test_metrics_off_and_ipv6(self):
        settings = load(["--metrics-bind", "off", "--bind", "[::1]:9000"], {})
        assert settings.metrics_bind is None
        assert settings.bind == (Address("::1", 9000),)
        assert str(settings.bind[0]) == "[::1]:9000"

    def test_every_option_has_flag_env_and_help(self):
        for option in OPTIONS:
            assert option.flag.startswith("--") and option.env.startswith("GREENSERVE_")
            assert option.help
            option.parse(option.default)  # every default is itself valid


BAD_VALUES = [
    (["--workers", "zero"], "workers"),
    (["--ws-send-buffer", "0"], "ws_send_buffer"),
    (["--ws-send-buffer", "lots"], "ws_send_buffer"),
    (["--ws-send-timeout", "0"], "ws_send_timeout"),
    (["--ws-send-timeout", "-1"], "ws_send_timeout"),
    (["--workers", "0"], "workers"),
    (["--bind", "8001"], "bind"),
    (["--bind", "host:99999"], "bind"),
    (["--metrics-bind", "nowhere"], "metrics_bind"),
    (["--protocol", "udp"], "protocol"),
    (["--stats-interval", "0"], "stats_interval"),
    (["--timeout", "-1"], "timeout"),
    (["--graceful-timeout", "soon"], "graceful_timeout"),
    (["--max-connections", "1.5"], "max_connections"),
    (["--idle-timeout", "nan"], "idle_timeout"),
    (["--log-format", "xml"], "log_format"),
    (["--log-level", "loud"], "log_level"),
    (["nocolon"], "APP"),
    (["--no-such-option"], "--no-such-option"),
]


class TestErrors:
    """Every bad value is one line that names the setting and the value."""

    @pytest.mark.parametrize(("argv", "name"), BAD_VALUES)
    def test_bad_cli_value(self, argv, name):
        with pytest.raises(ConfigError) as info:
            load(argv, {})
        message = str(info.value)
        assert name in message
        assert "\n" not in message

    def test_bad_env_value_names_the_variable(self):
        with pytest.raises(ConfigError, match=r"GREENSERVE_WORKERS.*'many'"):
            load([], {"GREENSERVE_WORKERS": "many"})

    def test_unknown_env_setting_is_a_warning_with_the_closest_name(self):
        resolved = resolve([], {"GREENSERVE_WORKRES": "2"})
        [warning] = resolved.warnings
        assert warning.name == "GREENSERVE_WORKRES" and warning.closest == "GREENSERVE_WORKERS"
        assert "GREENSERVE_WORKRES" in str(warning) and "GREENSERVE_WORKERS" in str(warning)

    def test_kubernetes_service_links_are_ignored(self):
        """What the kubelet injects for Services named greenserve and greenserve-metrics."""
        links = {
            "GREENSERVE_SERVICE_HOST": "10.96.0.12",
            "GREENSERVE_SERVICE_PORT": "8000",
            "GREENSERVE_SERVICE_PORT_HTTP": "8000",
            "GREENSERVE_PORT": "tcp://10.96.0.12:8000",
            "GREENSERVE_PORT_8000_TCP": "tcp://10.96.0.12:8000",
            "GREENSERVE_PORT_8000_TCP_PROTO": "tcp",
            "GREENSERVE_PORT_8000_TCP_PORT": "8000",
            "GREENSERVE_PORT_8000_TCP_ADDR": "10.96.0.12",
            "GREENSERVE_METRICS_SERVICE_HOST": "10.96.0.13",
            "GREENSERVE_METRICS_PORT_9191_TCP": "tcp://10.96.0.13:9191",
        }
        resolved = resolve([], {**links, "GREENSERVE_WORKERS": "2"})
        assert resolved.warnings == () and resolved.settings.workers == 2


class TestSwitches:
    """A switch's value is optional, and never swallows the argument after it."""

    def test_the_app_after_a_switch_is_the_app(self):
        settings = load(["--access-log", "tests.apps:app", "-w", "2"], {})
        assert settings.access_log is True and settings.app is not None

    @pytest.mark.parametrize(("word", "value"), [("false", False), ("on", True), ("0", False)])
    def test_a_boolean_word_after_a_switch_is_its_value(self, word, value):
        assert load(["--access-log", word], {}).access_log is value
        assert load([f"--access-log={word}"], {}).access_log is value

    def test_unknown_file_key(self, tmp_path):
        path = _write(tmp_path, "wokers = 2\n")
        with pytest.raises(ConfigError, match="unknown setting 'wokers'"):
            load(["--config", path], {})

    def test_bad_file_value_and_type(self, tmp_path):
        with pytest.raises(ConfigError, match=r"max_connections.*'lots'"):
            load(["--config", _write(tmp_path, 'max_connections = "lots"\n')], {})
        with pytest.raises(ConfigError, match="workers"):
            load(["--config", _write(tmp_path, "workers = true\n")], {})

    def test_unreadable_and_invalid_files(self, tmp_path):
        with pytest.raises(ConfigError, match="cannot read config file"):
            load(["--config", str(tmp_path / "missing.toml")], {})
        with pytest.raises(ConfigError, match="not valid TOML"):
            load(["--config", _write(tmp_path, "workers = = 2\n")], {})


class TestFreeThreaded:
    """A free-threaded CPython is refused at start with one line, exit 2.

    No free-threaded interpreter is installed here: the build flag is what is faked."""

    def test_refused_before_anything(self, monkeypatch, capsys):
        import sysconfig

        from greenserve import cli

        real = sysconfig.get_config_var
        monkeypatch.setattr(
            sysconfig,
            "get_config_var",
            lambda name: 1 if name == "Py_GIL_DISABLED" else real(name),
        )
        assert cli.main(["--workers", "1"]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert "free-threaded" in line and "python3.13t" in line

    def test_the_standard_build_is_not(self):
        from greenserve.cli import free_threaded

        assert free_threaded() is False
