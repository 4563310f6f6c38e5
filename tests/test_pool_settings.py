"""The pool bounds of the SNMP and MQTT channels as configured in the INI file."""

from __future__ import annotations

import pytest

from delivery_worker.config import ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings("/dev/null", environ={})
    assert (settings.snmp.max_engines, settings.snmp.engine_idle_seconds) == (64, 600.0)
    assert (settings.mqtt.max_connections, settings.mqtt.connection_idle_seconds) == (32, 60.0)


def test_values_from_the_file(tmp_path) -> None:
    path = tmp_path / "worker.ini"
    path.write_text(
        "[snmp]\nmax_engines = 8\nengine_idle_seconds = 30\n"
        "[mqtt]\nmax_connections = 4\nconnection_idle_seconds = 5.5\n"
    )
    settings = load_settings(str(path), environ={})
    assert (settings.snmp.max_engines, settings.snmp.engine_idle_seconds) == (8, 30.0)
    assert (settings.mqtt.max_connections, settings.mqtt.connection_idle_seconds) == (4, 5.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[snmp]\nmax_engines = 0\n", "[snmp] max_engines: must be between 1 and 4096, got 0"),
        ("[mqtt]\nmax_connections = lots\n", "[mqtt] max_connections: expected an integer"),
        ("[mqtt]\nconnection_idle_seconds = 0\n", "[mqtt] connection_idle_seconds: must be > 0"),
        ("[snmp]\nengine_idle_seconds = -1\n", "[snmp] engine_idle_seconds: must be > 0"),
    ],
)
def test_bad_bounds_are_refused(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "worker.ini"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(str(path), environ={})
