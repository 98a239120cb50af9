"""`bgjobs proxy`: nginx in front of the API and the events service, with bgjobs's site config.

The site config (``server/nginx/bgjobs.conf``, package data) is what a production nginx should
serve; this module fills in its addresses and, for ``bgjobs proxy`` and ``bgjobs run``, wraps it
in a small main config of its own (pid file, temp folders and logs under the data folder), so
an nginx from the system's packages runs it without root and without touching /etc/nginx.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from importlib.resources import files

from bgjobs.core.config import Config
from bgjobs.core.embedded import allow_traverse
from bgjobs.core.errors import BgjobsError

DEFAULT_BIND = "127.0.0.1:8080"


class ProxyError(BgjobsError, RuntimeError):
    """nginx is missing or cannot be set up; the message says what to do."""


def site_config(cfg: Config, listen: str | None = None) -> str:
    """The site config with this installation's addresses and body limit filled in."""
    template = files("bgjobs.server").joinpath("nginx", "bgjobs.conf").read_text()
    values = {"listen": listen or cfg.proxy_bind or DEFAULT_BIND, "api": cfg.api_bind,
              "events": cfg.events_bind, "max_body": str(cfg.max_body_bytes)}
    for name, value in values.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        raise ProxyError("nginx is not installed: `apt-get install nginx` (Debian, Ubuntu), "
                         "or run the services without the proxy, on 127.0.0.1 only")
    return found


def prepare(cfg: Config, listen: str | None = None) -> tuple[str, list[str]]:
    """Write the configs under the data folder; the nginx command line that runs them."""
    binary = nginx_binary()
    prefix = cfg.data_dir / "proxy"
    temp = prefix / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    (prefix / "bgjobs.conf").write_text(site_config(cfg, listen))
    user = ""
    if os.geteuid() == 0:
        # nginx's workers drop root for an unprivileged user: they need only the temp folders.
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"
        for path in (temp, *temp.iterdir()):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        allow_traverse(temp)
    temps = "\n".join(f"    {kind}_temp_path {temp / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"# Written by `bgjobs proxy`; the site itself is bgjobs.conf beside this file.\n"
        f"{user}worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log stderr warn;\n"
        f"events {{\n    worker_connections 4096;\n}}\n"
        f"http {{\n    access_log off;\n    default_type application/octet-stream;\n{temps}\n"
        f"    include {prefix / 'bgjobs.conf'};\n}}\n")
    return binary, ["-p", str(prefix), "-e", "stderr", "-c", str(prefix / "nginx.conf"),
                            "-g", "daemon off;"]

