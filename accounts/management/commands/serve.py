from django.conf import settings
from django.core.management.base import BaseCommand


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
        from daphne.cli import CommandLineInterface

        worker = None
        if settings.EMBEDDED and not no_worker:
            from config.embedded import embedded_worker_start

            worker = embedded_worker_start()
        self.stdout.write(f"Convoy ({settings.SHAPE} shape) on http://{host}:{port}/", ending="\n")
        self.stdout.flush()
        try:
            CommandLineInterface().run(
                ["--bind", host, "--port", str(port), "config.asgi:application"]
            )
        finally:
            if worker is not None:
                worker.stop()
