"""The hosts pip fetches packages from, as pip's configuration names them: one a line.

``bench/ray_up_local.sh`` lets its proxy through to these hosts only. They are read when it
runs: the ``index-url``, ``extra-index-url`` and ``find-links`` URLs of every entry
``pip config list`` shows (the configuration files and the ``PIP_*`` variables). Where no
``index-url`` is set, pip's default index counts, and for an index pip knows the host it
serves its files from: both as the installed pip names them, so no host is written here.

    python bench/index_hosts.py        # with the pip whose configuration counts
"""

from __future__ import annotations

import ast
import subprocess
import sys
from urllib.parse import urlsplit

URL_KEYS = ("index-url", "extra-index-url", "find-links")


def pip_config() -> list[str]:
    """``pip config list``: lines such as ``global.index-url='https://...'``."""
    cmd = [sys.executable, "-m", "pip", "config", "list"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()


def configured_urls(lines: list[str]) -> dict[str, list[str]]:
    """The URLs of each key in ``URL_KEYS``, whatever its section (``global``, ``install``,
    ``:env:``); a value may hold several, separated by white space."""
    urls: dict[str, list[str]] = {}
    for line in lines:
        name, sep, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        if sep and key in URL_KEYS:
            urls.setdefault(key, []).extend(ast.literal_eval(value).split())
    return urls


def default_index_url() -> str:
    """The index pip uses when none is configured (its ``--index-url`` default)."""
    from pip._internal.cli.cmdoptions import index_url

    return index_url().default


def file_hosts(hosts: set[str]) -> set[str]:
    """The hosts that indexes pip knows (its ``PackageIndex`` objects) serve files from."""
    from pip._internal.models import index

    known = [v for v in vars(index).values() if isinstance(v, index.PackageIndex)]
    return {k.file_storage_domain for k in known if k.netloc in hosts}


def index_hosts(lines: list[str]) -> list[str]:
    """The hosts named by ``pip config list`` output, pip's default index where no
    ``index-url`` is set, and the file hosts of the indexes pip knows among them."""
    urls = configured_urls(lines)
    if "index-url" not in urls:
        urls["index-url"] = [default_index_url()]
    hosts = {urlsplit(url).hostname for found in urls.values() for url in found}
    hosts -= {None, ""}  # paths and file:// URLs: no network
    return sorted(hosts | file_hosts(hosts))


def main() -> int:
    try:
        hosts = index_hosts(pip_config())
    except (subprocess.CalledProcessError, ImportError, AttributeError) as err:
        print(f"error: pip's index hosts could not be read: {err}", file=sys.stderr)
        return 1
    print("\n".join(hosts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
