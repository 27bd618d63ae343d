"""`manage.py serve`: the web server (daphne), plus the embedded shape's worker and beat."""

import os
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.embedded import embedded_worker_start


class Command(BaseCommand):
    help = (
        "Serve HTTP and websockets (daphne). In the embedded shape this process also runs the "
        "Celery worker and beat; in the production shape start `celery -A config worker` apart."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-worker", action="store_true", help="embedded: don't run tasks here"
        )

    def handle(self, *args, host, port, no_worker, **options):
        # daphne installs its Twisted reactor when imported: only in the command that serves.
        from daphne.cli import CommandLineInterface

        worker = None
        died: list[str] = []
        if settings.EMBEDDED and not no_worker:
            worker = embedded_worker_start()

            def on_death(why: str) -> None:
                died.append(why)
                # daphne's reactor stops cleanly on SIGTERM (its handler runs on the main
                # thread); this runs on the watcher's.
                os.kill(os.getpid(), signal.SIGTERM)

            worker.watch(on_death)
        self.stdout.write(f"Convoy ({settings.SHAPE} shape) on http://{host}:{port}/", ending="\n")
        self.stdout.flush()
        try:
            CommandLineInterface().run(
                ["--bind", host, "--port", str(port), "config.asgi:application"]
            )
        finally:
            if worker is not None and not worker.stop():
                # A job stuck in a pool thread would hold the interpreter's exit (it joins
                # those threads): leave now rather than never.
                sys.stderr.write("convoy: embedded worker did not stop in time; exiting\n")
                sys.stderr.flush()
                os._exit(3 if died else 1)
        if died:
            raise CommandError(f"{died[0]}; the server stopped")
