"""Campaign images: root filesystems built once from an `image:` spec and shared (docs/images.md).

spec.py parses the spec and computes the key; build.py builds a rootfs on disk; oci.py pulls one
from a registry; services.py decides who builds and records it; mounts.py is what backends call;
modal_image.py translates a spec for Modal.
"""
