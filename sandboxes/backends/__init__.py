"""Sandbox engines by the name used in settings, specs and the CLI (imported on first use)."""

from django.conf import settings

BACKENDS = {
    "gvisor": "sandboxes.backends.gvisor.GVisorBackend",
    "bwrap": "sandboxes.backends.bubblewrap.BubblewrapBackend",
    "modal": "sandboxes.backends.modal.ModalBackend",
    "e2b": "sandboxes.backends.e2b.E2BBackend",
    "daytona": "sandboxes.backends.daytona.DaytonaBackend",
    "process": "sandboxes.backends.process.ProcessBackend",
}
if settings.SANDBOX_SIM:  # the scale benchmark's simulation, never otherwise
    BACKENDS["sim"] = "sandboxes.backends.sim.SimBackend"
LOCAL_BACKENDS = ("gvisor", "bwrap", "process")
