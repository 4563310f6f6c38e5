"""Every DELIVERY_WORKER_* variable names a setting, or start-up stops naming the variable."""

from __future__ import annotations

import pytest

from delivery_worker.config import ConfigError, load_settings
from tests.test_config import run_cli


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "DELIVERY_WORKER_WROKER_THREADS",
            "$DELIVERY_WORKER_WROKER_THREADS: unknown variable; "
            "did you mean $DELIVERY_WORKER_WORKER_THREADS?",
        ),
        (
            "DELIVERY_WORKER_METRIC_PORT",
            "$DELIVERY_WORKER_METRIC_PORT: unknown variable; did you mean $DELIVERY_WORKER_METRICS_PORT?",
        ),
        ("DELIVERY_WORKER_THREADS", "$DELIVERY_WORKER_THREADS: unknown variable"),
        ("DELIVERY_WORKER_CONFG", "did you mean $DELIVERY_WORKER_CONFIG?"),
        (
            "DELIVERY_WORKER_WORKER_THRADS",
            "$DELIVERY_WORKER_WORKER_THRADS: [worker] thrads: unknown key; "
            "did you mean $DELIVERY_WORKER_WORKER_THREADS?",
        ),
    ],
)
def test_a_variable_naming_no_setting_is_an_error(variable, message):
    with pytest.raises(ConfigError) as caught:
        load_settings("/dev/null", environ={variable: "4"})
    assert str(caught.value).startswith(f"${variable}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_misspelled_section_stops_every_command_with_exit_2_and_one_line():
    for command in ("run", "check-config", "migrate"):
        result = run_cli("--config", "/dev/null", command, env={"DELIVERY_WORKER_WROKER_THREADS": "4"})
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("delivery-worker: config error: $DELIVERY_WORKER_WROKER_THREADS: unknown")
        assert result.stdout == ""


def test_the_config_path_variable_and_real_settings_are_accepted(tmp_path):
    path = tmp_path / "worker.ini"
    path.write_text("[worker]\nthreads = 3\n")
    settings = load_settings(
        None, environ={"DELIVERY_WORKER_CONFIG": str(path), "DELIVERY_WORKER_METRICS_PORT": "9464"}
    )
    assert settings.worker.threads == 3 and settings.metrics.port == 9464


KUBERNETES_LINKS = {  # a Service "delivery-worker" with a port named "metrics" in the pod's namespace
    "DELIVERY_WORKER_SERVICE_HOST": "10.96.0.12",
    "DELIVERY_WORKER_SERVICE_PORT": "9464",
    "DELIVERY_WORKER_SERVICE_PORT_METRICS": "9464",
    "DELIVERY_WORKER_PORT": "tcp://10.96.0.12:9464",
    "DELIVERY_WORKER_PORT_9464_TCP": "tcp://10.96.0.12:9464",
    "DELIVERY_WORKER_PORT_9464_TCP_PROTO": "tcp",
    "DELIVERY_WORKER_PORT_9464_TCP_PORT": "9464",
    "DELIVERY_WORKER_PORT_9464_TCP_ADDR": "10.96.0.12",
    # and one named "delivery-worker-metrics"
    "DELIVERY_WORKER_METRICS_SERVICE_HOST": "10.96.0.13",
    "DELIVERY_WORKER_METRICS_PORT_9464_TCP": "tcp://10.96.0.13:9464",
}


def test_kubernetes_service_links_are_not_typos():
    settings = load_settings("/dev/null", environ=KUBERNETES_LINKS)
    assert settings.metrics.port == 0


def test_without_its_service_host_a_link_shaped_variable_is_still_an_error():
    links = {k: v for k, v in KUBERNETES_LINKS.items() if not k.endswith("SERVICE_HOST")}
    with pytest.raises(ConfigError, match=r"\$DELIVERY_WORKER_"):
        load_settings("/dev/null", environ=links)
