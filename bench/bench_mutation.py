"""Mutation score of the code that decides and keeps results: mutmut over toolkit/recommend/, toolkit/io.py and
toolkit/pipeline/cache.py, run against the fast in-process tests that check them; prints killed/total.

mutmut changes one thing at a time in that code (a `<` into `<=`, a constant, a dropped call) and runs the tests
that reach the changed function, fastest first (tests/conftest.py), stopping at the first that fails; a mutant
the tests do not notice "survives". The score is (killed + timed out) / every mutant run: survivors and mutants
no test reaches count against it. A timeout is a CPU-time limit (SIGXCPU, 3x the clean run), so other work on
the machine cannot make one. Not part of CI's default run: the 2,700 mutants take about 3 hours of one core
(the select.py and noise.py mutants run the property tests); run it by hand after changing that code or its
tests, or `--only` the file you changed (mutmut also keeps the results of functions whose source did not
change). Goal: >= 85%.

    .venv/bin/python bench/bench_mutation.py [--workdir /tmp/edgefirst-mutation] [--max-children 1] [--fresh]
    .venv/bin/python bench/bench_mutation.py --only toolkit/pipeline/cache.py     # one file, minutes
    .venv/bin/python bench/bench_mutation.py --survivors --only toolkit/recommend/notes.py   # after new tests

It works in a copy of the repository (`--workdir`, kept between runs so that mutmut reuses what it already
ran; `--fresh` starts over), so the tree you edit is never touched. The tests there read the test cache
(EDGEFIRST_TEST_CACHE, default: this checkout's .pytest_cache/d/edgefirst-cache) and need no network.
Survivors are listed with `mutmut results` / `mutmut show NAME` run in the work folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTATE = ["toolkit/recommend/*.py", "toolkit/io.py", "toolkit/pipeline/cache.py"]
# In-process tests only (mutmut sees which test reaches which function in its own process; a test that runs
# the code in a child process cannot kill a mutant): selection, budgets, noise, costs, reports, the recommendation
# service, records and atomic writes, the cache and the faults around it.
TESTS = ["tests/test_select.py", "tests/test_budget_limits.py", "tests/test_noise.py", "tests/test_rounds.py",
         "tests/test_costs_reports.py", "tests/test_cloud_prices.py", "tests/test_fleet_cluster.py", "tests/test_service.py",
         "tests/test_io_records.py", "tests/test_faults.py", "tests/test_cache_keys.py", "tests/test_terminal_doctor.py",
         "tests/test_recommend_units.py", "tests/test_cloud_catalogue.py", "tests/test_noise_units.py"]
COPY = ["toolkit", "tests", "models", "recipes", "schemas", "reports", "pyproject.toml", "README.md"]


def setup_cfg(mutate: list[str], tests: list[str]) -> str:
    # a mutant that makes the tests run 3x longer than the clean run has changed behaviour (a loop that no longer
    # ends, a bootstrap that no longer converges): stopped there and counted as detected, as mutation tools do
    lines = ["[mutmut]", "source_paths = toolkit", "timeout_multiplier = 3.0", "only_mutate ="]
    lines += [f"    {m}" for m in mutate]
    lines += ["pytest_add_cli_args =", "    --no-cov", "    -p", "    no:randomly", "    -p", "    no:cacheprovider", "    -q"]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["also_copy ="] + [f"    {c}" for c in COPY if c not in ("toolkit", "tests", "pyproject.toml")]  # data the tests read
    return "\n".join(lines) + "\n"


def prepare(workdir: Path, fresh: bool, mutate: list[str], tests: list[str]) -> None:
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    changed = False
    for name in COPY:
        source, target = ROOT / name, workdir / name
        if source.is_dir():
            before = _digest(target) if target.exists() else None
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".lock"))
            changed |= before != _digest(target)
        elif source.exists():
            changed |= not target.exists() or target.read_bytes() != source.read_bytes()
            shutil.copy2(source, target)
    cfg = setup_cfg(mutate, tests)
    if not (workdir / "setup.cfg").exists() or (workdir / "setup.cfg").read_text() != cfg:
        changed = True
        (workdir / "setup.cfg").write_text(cfg)
    if changed:  # mutmut's results belong to the code and tests they were run on
        shutil.rmtree(workdir / "mutants", ignore_errors=True)


def _digest(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgefirst-mutation"))
    # one at a time: with 2 children mutmut 3.8 reported mutants as survivors that every covering test kills when
    # the mutant is run alone (e.g. `options.append(None)` in options_at, 1 December 2026)
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--fresh", action="store_true", help="forget earlier results")
    parser.add_argument("--only", nargs="*", help="mutate only these files (globs), e.g. toolkit/io.py")
    parser.add_argument("--survivors", action="store_true",
                        help="after adding tests: copy the tests (and code) over and rerun only the mutants that were "
                             "not killed or not yet run")
    args = parser.parse_args()
    mutate = args.only or MUTATE
    env = dict(os.environ)
    env.setdefault("EDGEFIRST_TEST_CACHE", str(ROOT / ".pytest_cache" / "d" / "edgefirst-cache"))
    # a mutant's tests in order of their clean durations (tests/conftest.py): most mutants fall to a fast one
    env["EDGEFIRST_TESTS_FASTEST_FIRST"] = str(args.workdir.resolve() / "mutants" / "mutmut-stats.json")
    mutmut = [sys.executable, "-m", "mutmut"]
    names: list[str] = []
    if args.survivors:
        for name in COPY:
            source = ROOT / name
            # the code goes to the work folder only: mutmut sees what changed and makes those mutants again
            for target in (args.workdir / name, *([args.workdir / "mutants" / name] if name != "toolkit" else [])):
                if source.is_dir():
                    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                elif source.exists():
                    shutil.copy2(source, target)
        # every file stays in only_mutate (a narrower list makes mutmut overwrite the other files' mutants with
        # plain copies); --only picks which survivors to rerun, below
        (args.workdir / "setup.cfg").write_text(setup_cfg(MUTATE, TESTS))  # the test selection may have grown
        listed = subprocess.run([*mutmut, "results"], cwd=args.workdir, env=env, capture_output=True, text=True, check=True)
        names = [line.split(":")[0].strip() for line in listed.stdout.splitlines() if ":" in line]
        if args.only:  # only the mutants of those files (mutmut names them module.x_function__mutmut_N)
            names = [n for n in names if any(fnmatch.fnmatch(n.split(".x")[0].replace(".", "/") + ".py", g) for g in args.only)]
        print(f"rerunning {len(names)} mutants that were not killed")
    else:
        prepare(args.workdir, args.fresh, mutate, TESTS)
    start = time.perf_counter()
    run = subprocess.run([*mutmut, "run", "--max-children", str(args.max_children), *names], cwd=args.workdir, env=env)
    minutes = (time.perf_counter() - start) / 60
    subprocess.run([*mutmut, "export-cicd-stats"], cwd=args.workdir, env=env, check=True, capture_output=True)
    stats = json.loads((args.workdir / "mutants" / "mutmut-cicd-stats.json").read_text())
    detected = stats["killed"] + stats["timeout"]
    scored = detected + stats["survived"] + stats["no_tests"] + stats["suspicious"]
    score = detected / scored if scored else 0.0
    scope = MUTATE if args.survivors else mutate  # the results mutmut holds: every file of setup.cfg
    print(f"\nmutation score over {', '.join(scope)}: killed {detected}/{scored} = {score:.1%} "
          f"(failed a test {stats['killed']}, timed out {stats['timeout']}; survived {stats['survived']}, no test reaches "
          f"{stats['no_tests']}, suspicious {stats['suspicious']}, skipped {stats['skipped']}, not yet run "
          f"{stats['total'] - scored - stats['skipped']}; {minutes:.0f} min; mutmut exit {run.returncode})")
    print(f"survivors: cd {args.workdir} && {sys.executable} -m mutmut results")
    return 0 if run.returncode == 0 else run.returncode


if __name__ == "__main__":
    sys.exit(main())
