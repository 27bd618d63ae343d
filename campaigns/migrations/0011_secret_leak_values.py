"""Secret findings keep the values they found (encrypted), so a rotation does not unmask the
diff. Findings made before this keep the current values: those they were found with, unless
the secret was rotated since (then they stay as they were, masked with the current value)."""

import json

from django.db import migrations, models

from core.crypto import secrets_fernet


def leak_values_keep(apps, schema_editor):
    SecretLeak = apps.get_model("campaigns", "SecretLeak")
    Secret = apps.get_model("campaigns", "Secret")
    leaks = [leak for leak in SecretLeak.objects.all() if not bytes(leak.values_ciphertext)]
    if not leaks:
        return  # no key needed where nothing was ever flagged
    fernet = secrets_fernet()
    stored = dict(Secret.objects.values_list("name", "ciphertext"))
    for leak in leaks:
        values = {
            name: fernet.decrypt(bytes(stored[name])).decode()
            for name in leak.names
            if name in stored
        }
        if values:
            leak.values_ciphertext = fernet.encrypt(json.dumps(values).encode())
            leak.save(update_fields=["values_ciphertext"])


class Migration(migrations.Migration):
    dependencies = [
        ("campaigns", "0010_repository_tag_owner"),
    ]

    operations = [
        migrations.AddField(
            model_name="secretleak",
            name="values_ciphertext",
            field=models.BinaryField(blank=True, default=b""),
        ),
        migrations.RunPython(leak_values_keep, migrations.RunPython.noop),
    ]
