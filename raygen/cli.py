"""The `raygen` command."""

from __future__ import annotations

import json
import sys

import click

from raygen.errors import UserError, find_user_error
from raygen.submit import jobs, submit
from raygen.workloads import WORKLOADS

ADDRESS_HELP = "Ray cluster to join (auto, host:port, ray://...). Default: $RAY_ADDRESS, else an embedded local Ray."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raygen")
def cli() -> None:
    """raygen: generative-model research on a Ray cluster.

    Run a job file locally with `raygen run jobs/quickstart.yaml`; submit it to a cluster with
    `raygen submit jobs/quickstart.yaml --address http://HEAD:8265`.
    """


def run_job(job_file: str, address: str | None, overrides: tuple[str, ...], dry_run: bool, verbose: bool,
            expect_workload: str | None = None, fresh: bool = False) -> None:
    from raygen import storage
    from raygen.api import execute
    from raygen.jobs import load_job

    job = load_job(job_file, overrides)
    if expect_workload is not None and job.workload != expect_workload:
        raise UserError(
            f"{job_file} is a '{job.workload}' job, not '{expect_workload}'; run it with `raygen run {job_file}`"
        )
    if dry_run:
        click.echo(json.dumps({"workload": job.workload, **job.config.to_dict()}, indent=2))
        return
    execute(job.workload, job.config, address=address, verbose=verbose, fresh=fresh)
    click.echo(f"done: {job.workload} run '{job.config.name}' -> {storage.display(job.config.run_dir)}")
    report = storage.resolve(job.config.run_dir).child("report.md")
    if storage.exists(report):
        click.echo(f"report: {storage.display(report.uri)}")


def job_command(name: str, workload: str | None, default_job: str | None, help_text: str):
    """A command that runs a job file (`raygen run`) or a workload's job file (`raygen sample` ...)."""

    @click.command(name=name, help=help_text)
    @click.argument("job_file", required=default_job is None, default=default_job, metavar="JOB.yaml")
    @click.option("--address", default=None, help=ADDRESS_HELP)
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (repeatable).")
    @click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
    @click.option("--fresh", is_flag=True, help="Delete this run's directory first and start over.")
    @click.option("-v", "--verbose", is_flag=True, help="Show Ray's own logs.")
    def command(job_file, address, overrides, dry_run, fresh, verbose):
        run_job(job_file, address, overrides, dry_run, verbose, expect_workload=workload, fresh=fresh)

    return command


cli.add_command(job_command("run", None, None, "Run a job file (jobs/*.yaml) on local Ray or a cluster."))
for _verb, _workload in WORKLOADS.items():
    if _verb != "quickstart":  # the main job runs with `raygen run jobs/quickstart.yaml` / `make demo`
        cli.add_command(job_command(_verb, _verb, _workload.default_job,
                                    f"{_workload.help} (default: {_workload.default_job})"))
cli.add_command(submit)
cli.add_command(jobs)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):  # Ctrl-C (click turns it into Abort): work done is kept
        live = sys.stderr.isatty()  # a live progress line may be open: end it first
        click.echo(f"{chr(10) if live else ''}stopped; re-run the same command to resume", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - user mistakes become one line, bugs keep their traceback
        user_error = find_user_error(exc)
        if user_error is None:
            raise
        click.echo(f"error: {user_error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
