"""The audit search box: a filter that cannot be read is shown beside the box, not as a 500."""

from django import forms

from audit.selectors import AuditFilterError, AuditQuery, audit_query_parse


class AuditFilterForm(forms.Form):
    q = forms.CharField(required=False, strip=False)

    def clean_q(self) -> AuditQuery:
        try:
            return audit_query_parse(text=self.cleaned_data.get("q", ""))
        except AuditFilterError as exc:
            # The form is where a typed filter's refusal becomes a field error.
            raise forms.ValidationError(exc.message) from None
