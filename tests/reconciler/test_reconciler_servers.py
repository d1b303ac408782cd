"""The real servers the reconciler tests start: a missing Prometheus or Alertmanager fails a test, never skips it."""

from __future__ import annotations

from pathlib import Path

import conftest as servers
import pytest


def test_a_missing_alertmanager_fails_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no binary of any name
    monkeypatch.setattr(servers, "ALERTMANAGER_BIN", None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus-alertmanager"):
        servers.start_alertmanager(tmp_path / "am")


def test_a_missing_prometheus_fails_with_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(servers, "PROMETHEUS_BIN", None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install prometheus\b"):
        servers.prometheus_binary()


def test_installed_servers_are_found() -> None:
    assert Path(servers.alertmanager_binary()).name in {"prometheus-alertmanager", "alertmanager"}
    assert Path(servers.prometheus_binary()).name == "prometheus"
