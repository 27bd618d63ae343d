"""The raw log download: the stored lines as plain text, streamed."""

from django.contrib.auth.decorators import login_required
from django.http import StreamingHttpResponse

from sandboxes.logs import log_text_iter
from sandboxes.selectors import sandbox_get_for_user


@login_required
def sandbox_log_raw(request, pk: int):
    sandbox = sandbox_get_for_user(user=request.user, pk=pk)
    response = StreamingHttpResponse(
        log_text_iter(sandbox_id=sandbox.pk), content_type="text/plain; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="sandbox-{sandbox.pk}.log"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
