"""The ``insilico-trials`` command.

Exit codes: 0 success; 1 the work ran but its result is a failure (``rerun`` found a difference,
the archive was tampered with, a service failed: :class:`~insilico_trials.errors.RunFailure`);
130 interrupted (Ctrl-C; nothing partial written); 2 bad input (protocol, data set, archive
path, arguments:
:class:`~insilico_trials.errors.InputError`), reported before any work starts and with nothing
written. This is the only module that maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its message short
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _workers(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="insilico-trials", description="Orchestrated in-silico clinical trials.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="check protocol files; exit 2 listing every error")
    v.add_argument("protocols", nargs="+", type=Path)

    def services(sp: argparse.ArgumentParser, *, threads: bool = False) -> None:
        sp.add_argument(
            "--workers",
            type=_workers,
            default=None,
            help="LocalCluster workers (default: CPUs)",
        )
        if threads:
            sp.add_argument(
                "--worker-processes",
                action="store_true",
                help="LocalCluster workers as processes; default: threads in this process "
                "(no second import of the libraries; same numbers)",
            )
        sp.add_argument(
            "--dask-address",
            default=os.environ.get("INSILICO_DASK_ADDRESS"),
            help="attach to an existing Dask scheduler, e.g. tcp://host:8786 (env INSILICO_DASK_ADDRESS)",
        )

    sv = sub.add_parser(
        "services",
        help="warm mode: start, stop or show the local Prefect, Dask and MLflow services "
        "that later commands from this folder use",
    )
    sv.add_argument("action", choices=("start", "stop", "status"))
    sv.add_argument(
        "--workers", type=_workers, default=None, help="Dask worker processes (default: CPUs)"
    )

    r = sub.add_parser("run", help="run a whole in-silico trial and archive it")
    r.add_argument("protocol", type=Path)
    services(r, threads=True)
    r.add_argument(
        "--chunk-size",
        type=_workers,
        default=None,
        help="patients per Dask task (no effect on numbers)",
    )
    r.add_argument(
        "--reports", type=Path, default=Path("reports"), help="archive root (default: reports/)"
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="take the stages an interrupted run of this protocol finished from the task cache",
    )

    d = sub.add_parser(
        "design", help="operating characteristics of the protocol's design scenarios"
    )
    d.add_argument("protocol", type=Path)
    d.add_argument(
        "--replicates", type=_workers, required=True, help="simulated trials per scenario"
    )
    services(d)
    d.add_argument(
        "--reports", type=Path, default=Path("reports"), help="output root (default: reports/)"
    )

    def sign(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--sign-key",
            type=Path,
            default=_env_path("INSILICO_SIGN_KEY"),
            help="Ed25519 private key (insilico-trials keygen) to sign the manifest with "
            "(env INSILICO_SIGN_KEY)",
        )

    def verify(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--verify-key",
            type=Path,
            default=_env_path("INSILICO_VERIFY_KEY"),
            help="Ed25519 public key the archive's manifests must be signed with "
            "(env INSILICO_VERIFY_KEY)",
        )
        sp.add_argument(
            "--check-tracking",
            action="store_true",
            help="also compare the archive with the tracking store's record of its run and "
            "updates (MLFLOW_TRACKING_URI, or the embedded store)",
        )

    sign(r)

    rr = sub.add_parser("rerun", help="re-execute an archived run and compare every numeric output")
    rr.add_argument("archive", type=Path)
    services(rr, threads=True)
    verify(rr)

    rp = sub.add_parser(
        "report", help="rebuild the HTML report of an archive from the archive alone"
    )
    rp.add_argument("archive", type=Path)
    rp.add_argument(
        "--pdf", action="store_true", help="also print it to PDF beside it (headless Chromium)"
    )
    rp.add_argument(
        "-o", "--output", type=Path, default=None,
        help="where to write it (default ARCHIVE-report.html beside the archive; never inside)",
    )  # fmt: skip
    verify(rp)

    up = sub.add_parser("update", help="update the synthetic control arm with a real data cut")
    up.add_argument("archive", type=Path)
    up.add_argument(
        "--data",
        type=Path,
        required=True,
        help="folder with adsl and adtte (or adlb), optional adrs, adex (CSV, Parquet or .xpt)",
    )
    up.add_argument(
        "--control-arm",
        default=None,
        help="ARM value of the control arm in the real data (default: the protocol's control arm name)",
    )
    up.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=ARM",
        help="ADSL ARM value of the real patients of protocol arm NAME (repeatable; default: "
        "the same name)",
    )
    up.add_argument(
        "--drop-unknown-columns",
        action="store_true",
        help="drop columns that are neither ADaM variables of the allow-list nor protocol "
        "covariates (listed and recorded in update.json) instead of refusing the cut",
    )
    sign(up)
    verify(up)

    kg = sub.add_parser("keygen", help="write an Ed25519 key pair for signing archives")
    kg.add_argument("path", type=Path, help="private key file (PATH.pub: the public key)")

    pk = sub.add_parser("pk", help="PK engine tools for pharmacometricians")
    pks = pk.add_subparsers(dest="pk_command", required=True, parser_class=_Parser)
    sim = pks.add_parser("simulate", help="simulate a NONMEM-style data set")
    sim.add_argument("data", type=Path)
    sim.add_argument("--model", required=True)
    sim.add_argument("-o", "--output", type=Path, required=True)
    sim.add_argument("--covariate-timing", choices=["nocb", "locf"], default="nocb")
    imp = pks.add_parser("import", help="translate a NONMEM control stream into a model file")
    imp.add_argument("control", type=Path, help="control stream (.mod, .ctl)")
    imp.add_argument("-o", "--output", type=Path, required=True, help="model file to write")
    imp.add_argument("--ext", type=Path, help="NONMEM .ext file: final THETA estimates")
    imp.add_argument("--etas", choices=["inputs", "zero"], default="inputs")
    return p


def cmd_validate(args: argparse.Namespace) -> int:
    from insilico_trials.run.preflight import validate_files

    issues = validate_files(args.protocols)
    for issue in issues:
        print(issue, file=sys.stderr)
    bad = {i.file for i in issues}
    for path in args.protocols:
        if str(path) not in bad:
            print(f"{path}: valid")
    return EXIT_BAD_INPUT if issues else EXIT_OK


def cmd_services(args: argparse.Namespace) -> int:
    from insilico_trials.adapters import services

    folder = Path.cwd()
    if args.action == "start":
        services.start_services(folder, workers=args.workers)
    elif args.action == "stop":
        services.stop_services(folder)
    else:
        print(services.services_status(folder))
    return EXIT_OK


def use_warm_services(args: argparse.Namespace) -> None:
    """A command that runs flows uses the warm services started from this folder
    (``insilico-trials services start``) for each service not configured otherwise."""
    from insilico_trials.adapters.services import STALE, STATE_FILE, code_changed, discover

    state = discover()
    if state is None:
        return
    if code_changed(state):
        print(STALE, file=sys.stderr)
        return
    used = []
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = state["prefect_api_url"]
        used.append("Prefect")
    if hasattr(args, "dask_address") and not args.dask_address:
        args.dask_address = state["dask_address"]
        used.append("Dask")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = state["mlflow_tracking_uri"]
        used.append("MLflow")
    if used:
        forked = " (this command forked by the warm driver)" * bool(
            os.environ.get("INSILICO_WARM_CHILD")
        )
        print(f"services: warm {', '.join(used)} from {STATE_FILE}{forked}")


def cmd_run(args: argparse.Namespace) -> int:
    from insilico_trials.app.commands import execute_run

    execute_run(
        args.protocol,
        reports=args.reports,
        workers=args.workers,
        processes=args.worker_processes,
        dask_address=args.dask_address,
        chunk_size=args.chunk_size,
        resume=args.resume,
        sign_key=args.sign_key,
    )
    return EXIT_OK


def cmd_design(args: argparse.Namespace) -> int:
    from insilico_trials.app.design_cmd import execute_design

    execute_design(
        args.protocol,
        replicates=args.replicates,
        workers=args.workers,
        dask_address=args.dask_address,
        reports=args.reports,
    )
    return EXIT_OK


def cmd_rerun(args: argparse.Namespace) -> int:
    from insilico_trials.app.commands import execute_rerun

    execute_rerun(
        args.archive, workers=args.workers, processes=args.worker_processes,
        dask_address=args.dask_address, verify_key=args.verify_key, check_tracking=args.check_tracking,
    )  # fmt: skip
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from insilico_trials.app.commands import rebuild_report

    rebuild_report(
        args.archive, args.output, pdf=args.pdf, verify_key=args.verify_key,
        check_tracking=args.check_tracking,
    )  # fmt: skip
    return EXIT_OK


def cmd_update(args: argparse.Namespace) -> int:
    from insilico_trials.app.commands import execute_update
    from insilico_trials.errors import InputError

    arms = {}
    for item in args.arm:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(
                f"--arm {item!r}: expected NAME=ARM (a protocol arm and its ADSL ARM value)",
                where="--arm", actual=item,
            )  # fmt: skip
        arms[name] = value
    execute_update(
        args.archive, args.data, control_arm=args.control_arm, arms=arms,
        verify_key=args.verify_key, sign_key=args.sign_key, check_tracking=args.check_tracking,
        drop_unknown_columns=args.drop_unknown_columns,
    )  # fmt: skip
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from insilico_trials.io.signing import generate_key

    key, pub = generate_key(args.path)
    print(f"private key: {key} (keep it; mode 0600)\npublic key:  {pub} (give it to verifiers)")
    return EXIT_OK


def cmd_pk(args: argparse.Namespace) -> int:
    from insilico_trials.app.pk_cli import simulate_csv
    from insilico_trials.errors import InputError

    if args.pk_command == "import":
        from insilico_trials.io.archive import atomic_write_text
        from insilico_trials.spec.nonmem import import_control_stream

        if args.output.resolve() == args.control.resolve():
            raise InputError(f"-o {args.output}: would overwrite the control stream")
        text = import_control_stream(args.control, ext=args.ext, etas=args.etas)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, text)
        print(f"{args.output}: model file from {args.control}")
        return EXIT_OK

    t0 = time.perf_counter()
    try:
        rows = simulate_csv(
            args.data,
            model=args.model,
            out_path=args.output,
            covariate_timing=args.covariate_timing,
        )
    except FileNotFoundError as exc:
        raise InputError(
            f"{exc.filename or args.data}: file not found", where=str(exc.filename or args.data)
        ) from None
    print(f"{args.output}: {rows} rows ({time.perf_counter() - t0:.2f} s)")
    return EXIT_OK


_CALLED = False


def main(argv: list[str] | None = None) -> int:
    global _CALLED
    if _CALLED:  # a later call in the same process (a test, a script): count from here
        import insilico_trials.app as app

        app.STARTED = time.perf_counter()
    _CALLED = True
    args = _parser().parse_args(argv)
    handler = {
        "validate": cmd_validate,
        "run": cmd_run,
        "design": cmd_design,
        "rerun": cmd_rerun,
        "report": cmd_report,
        "update": cmd_update,
        "keygen": cmd_keygen,
        "pk": cmd_pk,
        "services": cmd_services,
    }[args.command]
    if args.command in ("run", "rerun", "update", "design"):
        use_warm_services(args)
    from insilico_trials.adapters import interrupts
    from insilico_trials.errors import InsilicoError

    # After Ctrl-C, whatever error the interrupted work raised on its way out (a lost worker,
    # a service connection closed by the same Ctrl-C) is reported as the interruption it is.
    with interrupts.watching():
        try:
            return handler(args)
        except KeyboardInterrupt:
            return _interrupted(args.command)
        except InsilicoError as exc:  # the one place where errors become messages and exit codes
            if interrupts.seen():
                return _interrupted(args.command)
            print(exc.report(), file=sys.stderr)
            return exc.exit_code
        except Exception:
            if interrupts.seen():
                return _interrupted(args.command)
            raise


def _interrupted(command: str) -> int:
    print(
        f"interrupted: {command} stopped; nothing partial was written (archives and "
        "updates appear only when complete; `run --resume` takes the stages a run finished "
        "from the task cache)",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def entry() -> None:
    """The console script: ``main`` with the process's arguments; the process ends as soon as
    the command has (after Ctrl-C too: work stopped, nothing partial left), without waiting for
    threads of the orchestration libraries."""
    import insilico_trials.app as app
    from insilico_trials.app.warm_driver import dispatch

    code = dispatch(sys.argv[1:], app.STARTED)  # in the warm driver, when the services run
    if code is None:
        code = main()
    # Everything is written and closed by now (archives atomically, the MLflow run ended, the
    # services this command started stopped): end at once, instead of waiting ~2 s for the
    # orchestration libraries' idle background threads and exit handlers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
