"""The test hosts' network (tests/netns_hosts.py): hosts reach this namespace and each other, a host whose link is
down is cut off from both and back when it is up, and nothing of the network is left after it. Needs root and `ip`."""

from __future__ import annotations

import subprocess
import sys

from netns_hosts import host_network, ip
from polling import until

SERVE = "import http.server as h; h.HTTPServer(('{address}', 8000), h.SimpleHTTPRequestHandler).serve_forever()"


def reaches(host_argv: list[str], url: str) -> bool:
    probe = [sys.executable, "-c", f"import urllib.request as u; u.urlopen('{url}', timeout=1)"]
    return subprocess.run([*host_argv, *probe], capture_output=True, timeout=30, check=False).returncode == 0


def test_hosts_reach_each_other_until_a_link_goes_down_and_nothing_is_left() -> None:
    with host_network() as network:
        one, two = network.add_host("one"), network.add_host("two")
        assert one.address != two.address and network.gateway.rsplit(".", 1)[0] == one.address.rsplit(".", 1)[0]
        server = two.popen([sys.executable, "-c", SERVE.format(address=two.address)], stdout=subprocess.DEVNULL)
        url = f"http://{two.address}:8000/"
        until("host one reaches host two's server", lambda: reaches(one.argv([]), url))
        assert reaches([], url), "this namespace reaches a host"
        two.link_down()
        assert not reaches(one.argv([]), url) and not reaches([], url)
        assert server.poll() is None, "a host cut off keeps running"
        two.link_up()
        until("host two reachable again", lambda: reaches(one.argv([]), url))
        names = [one.name, two.name]
        bridge = network.bridge
    assert server.poll() is not None
    listed = ip("netns", "list").stdout
    assert not any(name in listed for name in names)
    assert ip("link", "show", bridge, check=False).returncode != 0
