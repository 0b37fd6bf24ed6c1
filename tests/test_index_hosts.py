"""bench/index_hosts.py: the hosts bench/ray_up_local.sh's proxy lets through, read from
pip's configuration (no host of a package index is written in the repository)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from bench.index_hosts import configured_urls, default_index_url, index_hosts, main

LINES = [
    "global.cert='/etc/ssl/certs/ca-certificates.crt'",
    "global.extra-index-url='file:///opt/wheels/simple https://extra.example/simple'",
    "global.find-links='/opt/wheels'",
    "install.find-links='https://links.example/wheels/'",
    ":env:.default-timeout='180'",
]


def test_urls_are_read_from_every_section_and_split():
    assert configured_urls([*LINES, ":env:.index-url='https://mirror.example:8443/simple'"]) == {
        "extra-index-url": ["file:///opt/wheels/simple", "https://extra.example/simple"],
        "find-links": ["/opt/wheels", "https://links.example/wheels/"],
        "index-url": ["https://mirror.example:8443/simple"],
    }


def test_a_configured_index_replaces_the_default_one():
    lines = [*LINES, "global.index-url='https://mirror.example/simple'"]
    assert index_hosts(lines) == ["extra.example", "links.example", "mirror.example"]


def test_without_an_index_url_pip_s_default_index_and_its_file_host_count():
    default = urlsplit(default_index_url()).hostname
    hosts = index_hosts(LINES)
    assert default in hosts
    rest = set(hosts) - {"extra.example", "links.example", default}
    assert len(rest) == 1  # where pip's default index serves its files


def test_paths_and_file_urls_name_no_host():
    lines = ["global.index-url='file:///opt/index/simple'", "global.find-links='/opt/wheels'"]
    assert index_hosts(lines) == []


def test_main_reads_what_pip_config_list_shows(monkeypatch, capsys):
    """Through ``pip config list`` itself; the machine's own files are left out (pip reads
    none with ``PIP_CONFIG_FILE`` set to the null device), its ``PIP_*`` variables set."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://extra.example/simple")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert main() == 0
    assert capsys.readouterr().out.split() == ["extra.example", "mirror.example"]
