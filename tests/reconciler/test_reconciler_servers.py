"""The real servers the reconciler tests start: a missing Prometheus or Alertmanager fails a test, never skips it."""

from __future__ import annotations

from pathlib import Path

import alertmanager_server
import pytest
import system_binaries


def test_a_missing_alertmanager_fails_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no binary of any name
    monkeypatch.setattr(system_binaries, "ALERTMANAGER_BIN", None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus-alertmanager"):
        alertmanager_server.start_alertmanager(tmp_path / "am")


def test_a_missing_prometheus_fails_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(system_binaries, "PROMETHEUS_BIN", None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus\b"):
        system_binaries.prometheus_binary()


def test_installed_servers_are_found() -> None:
    assert Path(system_binaries.alertmanager_binary()).name in {"prometheus-alertmanager", "alertmanager"}
    assert Path(system_binaries.prometheus_binary()).name == "prometheus"
