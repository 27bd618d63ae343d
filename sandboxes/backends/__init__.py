"""Sandbox engines by the name used in settings, specs and the CLI (imported on first use)."""

BACKENDS = {
    "gvisor": "sandboxes.backends.gvisor.GVisorBackend",
    "bwrap": "sandboxes.backends.bubblewrap.BubblewrapBackend",
    "modal": "sandboxes.backends.modal.ModalBackend",
    "e2b": "sandboxes.backends.e2b.E2BBackend",
    "daytona": "sandboxes.backends.daytona.DaytonaBackend",
    "process": "sandboxes.backends.process.ProcessBackend",
}
LOCAL_BACKENDS = ("gvisor", "bwrap", "process")
